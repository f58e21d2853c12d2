"""A calibration holds only under the instruction-set caps it was made with (`ONEDNN_MAX_CPU_ISA`,
`DNNL_MAX_CPU_ISA`, `ATEN_CPU_CAPABILITY`): they change which kernels run on the same CPU, so using it under
other caps is refused in one line, or warned about with --force."""

from __future__ import annotations

import json

import pytest
from test_latency import BATCH, fake_timer

from cmt_gen.devices.cpu import INSTRUCTION_SET_CAPS, instruction_set_caps
from cmt_gen.latency.calibrate import calibrate
from cmt_gen.latency.calibration_file import CalibrationError, calibration_from_dict, check_compatible


@pytest.fixture
def no_caps(monkeypatch):
    for name in INSTRUCTION_SET_CAPS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _calibration():
    return calibrate(device="cpu", batch_size=BATCH, threads=1, blocks_per_stage=3, networks=0, timer=fake_timer)


def test_caps_are_read_as_set_and_blank_ones_ignored():
    env = {"ONEDNN_MAX_CPU_ISA": " AVX2 ", "DNNL_MAX_CPU_ISA": "", "ATEN_CPU_CAPABILITY": "avx2", "PATH": "/bin"}
    assert instruction_set_caps(env) == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert instruction_set_caps({}) == {}


def test_a_calibration_records_its_caps_and_holds_under_the_same(no_caps):
    no_caps.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cal = _calibration()
    assert cal.environment["instruction_set_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert check_compatible(cal) == []
    no_caps.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN reads the value in any case
    assert check_compatible(cal) == []


@pytest.mark.parametrize("made_with, used_with", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    ({}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ({"DNNL_MAX_CPU_ISA": "AVX2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
])
def test_other_caps_are_refused_in_one_line_or_warned_when_forced(no_caps, made_with, used_with):
    for name, value in made_with.items():
        no_caps.setenv(name, value)
    cal = _calibration()
    for name in INSTRUCTION_SET_CAPS:
        no_caps.delenv(name, raising=False)
    for name, value in used_with.items():
        no_caps.setenv(name, value)
    with pytest.raises(CalibrationError, match="calibrated with .* this process runs with .*--force") as caught:
        check_compatible(cal, source="cal.json")
    assert caught.value.field == "environment.instruction_set_caps"
    message = str(caught.value)
    for caps in (made_with, used_with):
        assert all(f"{k}={v}" in message for k, v in caps.items()) and (caps or "no instruction-set cap" in message)
    [warning] = check_compatible(cal, force=True)
    assert warning.startswith("environment.instruction_set_caps: calibrated with") and "forced" in warning


def test_a_files_odd_caps_are_shown_on_one_bounded_line(no_caps):
    data = json.loads(_calibration().to_json())
    data["environment"]["instruction_set_caps"] = {"ONEDNN_MAX_CPU_ISA": "AVX2\nTraceback" + "x" * 500}
    with pytest.raises(CalibrationError) as caught:
        check_compatible(calibration_from_dict(data))
    message = str(caught.value)
    assert "\n" not in message and "ONEDNN_MAX_CPU_ISA=AVX2?Traceback" in message and "x" * 40 not in message


def test_files_from_before_the_caps_were_recorded_are_not_compared(no_caps):
    data = json.loads(_calibration().to_json())
    data["environment"].pop("instruction_set_caps")
    old = calibration_from_dict(data)
    no_caps.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert check_compatible(old) == []


def test_predict_refuses_a_calibration_made_under_other_caps(no_caps, cli, tmp_path):
    no_caps.setenv("ATEN_CPU_CAPABILITY", "avx2")
    path = tmp_path / "cal.json"
    path.write_text(_calibration().to_json())
    held = cli("predict", "cmt_ti", "--calibration", path)
    assert held.code == 0 and "ATEN_CPU_CAPABILITY=avx2 in the environment" in held.out.replace("\n", " ")
    no_caps.delenv("ATEN_CPU_CAPABILITY")
    result = cli("predict", "cmt_ti", "--calibration", path)
    assert result.code == 2 and "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and "ATEN_CPU_CAPABILITY=avx2" in lines[0], result.err
    assert "no instruction-set cap" in lines[0]
