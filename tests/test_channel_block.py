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


def test_the_probe_reads_torchs_cpu_capability(monkeypatch):
    block, source = REAL_PROBE("cpu")
    probe = getattr(torch.backends.cpu, "get_cpu_capability", None)
    if probe is not None:
        assert block == channel_block_of(probe()) and probe() in source
    assert REAL_PROBE("cuda") == (1, "cuda: channels as counted")
    # A torch without the probe, or one whose probe fails: channels as counted, and a reason, never a crash.
    monkeypatch.delattr(torch.backends.cpu, "get_cpu_capability", raising=False)
    assert REAL_PROBE("cpu")[0] == 1 and "unknown" in REAL_PROBE("cpu")[1]

    def broken():
        raise RuntimeError("no cpuinfo here")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", broken, raising=False)
    assert REAL_PROBE("cpu")[0] == 1


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
    assert calibrate(**common).channel_block == 8
    assert calibrate(**common, channel_block=1).channel_block == 1
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
