"""`cmt-gen build`, `profile` and `check --counter both` given detector specs, and their mistakes (exit 2, one line).

A tiny backbone (tests/data/tiny.yaml) at 256x320 keeps each command to a second or two.
"""

from __future__ import annotations

import json

import pytest
from conftest import DATA

pytest.importorskip("torchvision")


@pytest.fixture
def detector_file(tmp_path):
    path = tmp_path / "tiny_mask.yaml"
    path.write_text(f"name: tiny_mask\nkind: mask_rcnn\nbackbone: {DATA / 'tiny.yaml'}\n"
                    "input: {height: 256, width: 320}\nbox_head: {proposals: 64}\nmask_head: {proposals: 8}\n")
    return path


def _one_line_error(result, *words: str) -> None:
    assert result.code == 2, result.out + result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    for word in words:
        assert word in result.err, result.err


def test_build_prints_the_parts_runs_one_image_and_saves(cli, detector_file, tmp_path) -> None:
    out = tmp_path / "tiny_mask.pt"
    result = cli("build", detector_file, "-o", out, "--threads", "1")
    assert result.code == 0, result.out + result.err
    assert "analytic count agrees" in result.out and "mask_head" in result.out and "of which attention" in result.out
    assert out.is_file()
    import torch

    state = torch.load(out, weights_only=True)
    assert any(k.startswith("backbone.body.") for k in state) and any("mask_predictor" in k for k in state)


def test_build_loads_released_backbone_weights(cli, detector_file, tmp_path) -> None:
    import torch

    from cmt_gen.model.convert import released_state_dict
    from cmt_gen.model.network import build_model

    weights = tmp_path / "tiny_released.pth"
    torch.save({"model": released_state_dict(build_model(DATA / "tiny.yaml").state_dict())}, weights)
    result = cli("build", detector_file, "--weights", weights, "--json", "--threads", "1")
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["weights"] == str(weights) and record["built_params"] == record["params"]


def test_build_refuses_the_released_layout_and_bad_weights(cli, detector_file, tmp_path) -> None:
    _one_line_error(cli("build", detector_file, "--layout", "released"), "--layout", "backbones")
    _one_line_error(cli("build", detector_file, "--weights", tmp_path / "missing.pth"), "missing.pth")
    _one_line_error(cli("build", detector_file, "-o", detector_file), "tiny_mask.yaml")


def test_profile_measures_each_batch_and_writes_json(cli, detector_file, tmp_path) -> None:
    out = tmp_path / "profile.json"
    result = cli("profile", detector_file, "--threads", "1", "--warmup", "0", "--repeats", "1", "--json", out)
    assert result.code == 0, result.out + result.err
    records = json.loads(out.read_text())["detectors"]
    assert [r["batch"] for r in records] == [1, 2]
    assert all(r["images_per_s"] > 0 and (r["height"], r["width"]) == (256, 320) for r in records)


@pytest.mark.parametrize(("extra", "words"), [
    (["--precision", "bf16"], ["--precision", "backbones"]),
    (["--compile"], ["--compile", "backbones"]),
    (["cmt_ti"], ["separate runs"]),
    (["--repeats", "0"], ["--repeats"]),
])
def test_profile_refuses_what_a_detector_profile_cannot_do(cli, detector_file, extra, words) -> None:
    _one_line_error(cli("profile", detector_file, *extra), *words)


def test_traced_check_agrees_with_the_analytic_count(cli, detector_file) -> None:
    result = cli("check", detector_file, "--counter", "both", "--json", "--threads", "1")
    assert result.code == 0, result.out + result.err
    (record,) = json.loads(result.out)["detectors"]
    assert record["fvcore_params"] == record["params"] and record["fvcore_macs"] == record["macs"]
    assert record["verdict"] == "no reference"


def test_bad_detector_specs_exit_2_in_every_command(cli, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: retinanet\nbackbone: cmt_s\nfpn: {levels: [1, 2, 9]}\n")
    for command in ("build", "profile", "check", "validate"):
        _one_line_error(cli(command, bad), "fpn.levels.2", "stage 9 does not exist")


def test_outputs_never_replace_a_spec_the_detector_is_read_from(cli, detector_file, tmp_path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"name: child\nextends: {detector_file.name}\nretina_head: null\n")
    parent_as_weights = detector_file.with_suffix(".pt")
    parent_as_weights.write_text(detector_file.read_text())
    pt_child = tmp_path / "pt_child.yaml"
    pt_child.write_text(f"name: pt_child\nextends: {parent_as_weights.name}\n")
    _one_line_error(cli("build", pt_child, "-o", parent_as_weights), "also an input")
    _one_line_error(cli("profile", child, "--json", detector_file), "also an input")
    bundled = tmp_path / "bundled_child.yaml"
    bundled.write_text("name: bundled_child\nextends: cmt_s_mask_rcnn\n")
    assert cli("validate", bundled).code == 0
