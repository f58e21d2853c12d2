"""Blocks and stems counted with channels in whole blocks of the device's vector width (`PartShape.padded`; why, with
the measurements: `benchmarks/NOTES.md`): the padded counts, the CPU probe and its fallbacks, the field in
the calibration file, and exact recovery of a device that pads."""

from __future__ import annotations

import pytest
import torch
from test_latency import BATCH, TRUE, fake_timer

from cmt_gen.latency import measure
from cmt_gen.latency.calibrate import calibrate
from cmt_gen.latency.calibration_file import Calibration, CalibrationError, calibration_from_dict
from cmt_gen.latency.features import PartShape, round_up, spec_parts
from cmt_gen.latency.measure import channel_block_of
from cmt_gen.latency.predict import predict_latency
from cmt_gen.spec.loading import load_spec

REAL_PROBE = measure.device_channel_block  # conftest swaps it for calibrations in tests; the original is kept


def test_a_block_costs_what_its_padded_shape_costs():
    block = PartShape("block", 14, 14, 40, 40, heads=2, reduction=2, hidden=210)
    aligned = PartShape("block", 14, 14, 48, 48, heads=2, reduction=2, hidden=224)
    assert block.features(BATCH, 16) == aligned.features(BATCH, 1) == aligned.features(BATCH, 16)
    assert block.features(BATCH, 8) == PartShape("block", 14, 14, 40, 40, 2, 2, 216).features(BATCH)
    assert block.features(BATCH, 1) == block.features(BATCH) != aligned.features(BATCH)
    assert block.macs() < aligned.macs()  # MACs stay the exact count: only the latency features pad
    assert [round_up(c, 16) for c in (1, 16, 17, 210)] == [16, 16, 32, 224]


def test_a_stem_pads_its_width_but_not_the_images_channels():
    stem = PartShape("stem", 224, 224, 3, 40)
    assert stem.padded(16) == PartShape("stem", 224, 224, 3, 48)
    assert stem.features(BATCH, 16) == PartShape("stem", 224, 224, 3, 48).features(BATCH) != stem.features(BATCH)
    assert stem.features(BATCH, 16, padded_kinds=("block",)) == stem.features(BATCH)  # a file from before


@pytest.mark.parametrize("kind, shape", [("patch", (56, 56, 20, 40)), ("head", (7, 7, 330, 1280))])
def test_patches_and_heads_are_counted_as_written(kind, shape):
    part = PartShape(kind, *shape, classes=1000 if kind == "head" else 0)
    assert part.padded(16) is part and part.features(BATCH, 16) == part.features(BATCH)


@pytest.mark.parametrize("capability, block", [("AVX512", 16), ("AVX512_BF16", 16), ("avx2", 8), ("SVE256", 8),
                                               ("DEFAULT", 1), ("NO AVX", 1), ("ZVECTOR", 1), ("", 1)])
def test_channel_block_of_each_cpu_capability(capability, block):
    assert channel_block_of(capability) == block


def fake_cpu(monkeypatch, *, aten: str | None, avx512: bool | None, avx2: bool | None = True) -> None:
    """torch's probes as on some CPU and torch: None removes a probe (an older torch), as does no variable."""
    for variable in measure.ONEDNN_ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for module, name, value in ((torch.backends.cpu, "get_cpu_capability", aten),
                                (torch.cpu, "_is_avx512_supported", avx512), (torch.cpu, "_is_avx2_supported", avx2)):
        if value is None:
            monkeypatch.delattr(module, name, raising=False)
        else:
            monkeypatch.setattr(module, name, lambda value=value: value, raising=False)


def test_the_probe_follows_onednns_vector_width_not_atens(monkeypatch):
    """oneDNN lays channels out for the widest vectors the CPU has: ATEN_CPU_CAPABILITY=avx2 lowers ATen's
    capability but not oneDNN's layouts, ONEDNN_MAX_CPU_ISA=AVX2 lowers oneDNN's (`benchmarks/NOTES.md`)."""
    fake_cpu(monkeypatch, aten="AVX512", avx512=True)
    assert REAL_PROBE("cpu") == (16, "cpu capability AVX512")
    fake_cpu(monkeypatch, aten="AVX2", avx512=True)
    assert REAL_PROBE("cpu") == (16, "cpu capability AVX2; oneDNN runs the CPU's AVX512")
    fake_cpu(monkeypatch, aten="AVX2", avx512=False)
    assert REAL_PROBE("cpu") == (8, "cpu capability AVX2")
    fake_cpu(monkeypatch, aten="AVX512", avx512=None, avx2=None)  # a torch from before the CPU probes: ATen's
    assert REAL_PROBE("cpu") == (16, "cpu capability AVX512")
    fake_cpu(monkeypatch, aten="SVE256", avx512=False, avx2=False)  # not x86: ATen's names the vectors
    assert REAL_PROBE("cpu") == (8, "cpu capability SVE256")


@pytest.mark.parametrize("variable, value, expected", [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", (8, "cpu capability AVX512; oneDNN limited to AVX2 by ONEDNN_MAX_CPU_ISA")),
    ("DNNL_MAX_CPU_ISA", "sse41", (8, "cpu capability AVX512; oneDNN limited to sse41 by DNNL_MAX_CPU_ISA")),
    ("ONEDNN_MAX_CPU_ISA", "avx2_vnni", (8, "cpu capability AVX512; oneDNN limited to avx2_vnni by "
                                           "ONEDNN_MAX_CPU_ISA")),
    ("ONEDNN_MAX_CPU_ISA", "AVX", (8, "cpu capability AVX512; oneDNN limited to AVX by ONEDNN_MAX_CPU_ISA")),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", (16, "cpu capability AVX512")),  # a cap above the CPU's
    ("ONEDNN_MAX_CPU_ISA", "AVX10_1_512_AMX", (16, "cpu capability AVX512")),
    ("ONEDNN_MAX_CPU_ISA", "ALL", (16, "cpu capability AVX512")),
    ("ONEDNN_MAX_CPU_ISA", "AVX-2", (16, "cpu capability AVX512; ONEDNN_MAX_CPU_ISA=AVX-2 is not an instruction "
                                        "set known here, so not applied")),
])
def test_a_cap_on_onednns_isa_lowers_the_block(monkeypatch, variable, value, expected):
    fake_cpu(monkeypatch, aten="AVX512", avx512=True)
    monkeypatch.setenv(variable, value)
    assert REAL_PROBE("cpu") == expected


def test_both_variables_an_avx2_emulation_sets(monkeypatch):
    """`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 CPU (how `benchmarks/NOTES.md` ran
    an AVX2-only machine's kernels): 8, and the cap named."""
    fake_cpu(monkeypatch, aten="AVX2", avx512=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert REAL_PROBE("cpu") == (8, "cpu capability AVX2; oneDNN limited to AVX2 by ONEDNN_MAX_CPU_ISA")


def test_the_probe_never_fails(monkeypatch):
    assert REAL_PROBE("cuda") == (1, "cuda: channels as counted")
    fake_cpu(monkeypatch, aten=None, avx512=None, avx2=None)  # a torch with no probe: channels as counted
    assert REAL_PROBE("cpu")[0] == 1 and "unknown" in REAL_PROBE("cpu")[1]

    def broken():
        raise RuntimeError("no cpuinfo here")
    for module, name in ((torch.backends.cpu, "get_cpu_capability"), (torch.cpu, "_is_avx512_supported"),
                         (torch.cpu, "_is_avx2_supported")):
        monkeypatch.setattr(module, name, broken, raising=False)
    assert REAL_PROBE("cpu")[0] == 1


def test_the_probe_on_this_machine_agrees_with_torch():
    block, source = REAL_PROBE("cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    assert capability in source and block in (1, 8, 16)


def test_calibration_recovers_a_padded_device_exactly_and_predicts_with_it():
    """A device whose blocks cost their padded work: calibrated with its block, every coefficient comes back
    and a spec whose widths miss the block is predicted at its padded cost."""
    def padded_timer(part):
        return sum(c * f for c, f in zip(TRUE[part.kind], part.features(BATCH, 16), strict=True))

    cal = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=6, timer=padded_timer,
                    channel_block=16)
    assert cal.channel_block == 16
    for kind, truth in TRUE.items():
        assert cal.parts[kind].coefficients == pytest.approx(truth, rel=1e-6, abs=1e-18), kind
    spec = load_spec("cmt_xs", ["stem.channels=24", "stages.0.channels=40", "stages.1.channels=88",
                                *(f"stages.{i}.expansion=3.3" for i in range(4))])
    truth = sum(n * padded_timer(p) for p, n in spec_parts(spec))
    assert predict_latency(spec, cal).seconds == pytest.approx(truth, rel=1e-9)
    as_counted = Calibration(**{**cal.model_dump(), "channel_block": 1})
    assert predict_latency(spec, as_counted).seconds < truth
    blocks_only = Calibration(**{**cal.model_dump(), "padded_kinds": ("block",)})  # as files from before stems
    assert predict_latency(spec, as_counted).seconds < predict_latency(spec, blocks_only).seconds < truth


def test_calibrate_takes_the_devices_block_unless_given(monkeypatch):
    monkeypatch.setattr(measure, "device_channel_block", lambda device_type: (8, "cpu capability AVX2"))
    common = dict(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, timer=fake_timer)
    made = calibrate(**common)
    assert made.channel_block == 8 and made.environment["channel_block_source"] == "cpu capability AVX2"
    given = calibrate(**common, channel_block=1)
    assert given.channel_block == 1 and given.environment["channel_block_source"] == "as given (--channel-block)"
    for bad in (0, 65, 2.5, True):
        with pytest.raises(CalibrationError, match="channel_block: must be a whole number from 1 to 64"):
            calibrate(**common, channel_block=bad)


def _file_of_a_block_16_calibration() -> dict:
    made = calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, channel_block=16, timer=fake_timer)
    return made.model_dump(mode="json")


def test_files_from_before_the_channel_block_read_as_channels_as_counted():
    data = _file_of_a_block_16_calibration()
    assert calibration_from_dict(data).channel_block == 16
    data.pop("channel_block")
    assert calibration_from_dict(data).channel_block == 1
    with pytest.raises(CalibrationError, match="channel_block"):
        calibration_from_dict({**data, "channel_block": 0})


def test_files_from_before_stems_padded_pad_blocks_only():
    data = _file_of_a_block_16_calibration()
    assert calibration_from_dict(data).padded_kinds == ("block", "stem")
    data.pop("padded_kinds")
    assert calibration_from_dict(data).padded_kinds == ("block",)
    with pytest.raises(CalibrationError, match="padded_kinds must name parts among stem, patch, block, head"):
        calibration_from_dict({**data, "padded_kinds": ["block", "neck"]})
