"""Detector specs without torch: loading, the rules a bad spec breaks, exact analytic counts, Tables 7 and 8.

The counts are checked against sums worked by hand from mmdetection's 1x
configs (FPN, RetinaNet head, RPN, Shared2FC box head, FCN mask head) and the
released CMT-S (26,256,160 parameters with its classifier, 1,940,200 of them in
the classifier), so a change in any part shows up as a changed number here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import DATA, REPO, subprocess_env

from cmt_gen.cost.detector import backbone_attention_macs, detector_cost
from cmt_gen.cost.tables78 import ROWS, for_spec, row
from cmt_gen.errors import SpecError
from cmt_gen.spec.detector_loading import is_detector, load_detector_spec

CMT_S_CLASSIFIER = 512 * 1280 + 1280 + 2 * 1280 + 1280 * 1000 + 1000
CMT_S_BACKBONE = 26_256_160 - CMT_S_CLASSIFIER  # 24,315,960
CONV3 = 256 * 256 * 9 + 256  # one 3x3 256 -> 256 conv with bias


def test_tables_7_and_8_match_the_transcribed_paper() -> None:
    """Each row as printed; the file's '# Params' column holds the FLOPs and '# FLOPs' the params (swapped)."""
    printed = {}
    table = None
    for line in (DATA / "paper_tables78.txt").read_text().splitlines():
        if line.startswith("Table "):
            table = line.split(":")[0]
        cells = line.split("\t")
        if len(cells) >= 4 and re.fullmatch(r"[0-9.]+B", cells[1]):
            backbone = re.sub(r"\s*(\[.*\]|\(ours\)|†)\s*", "", cells[0]).strip()
            printed[(table, backbone)] = (cells[1], cells[2], cells[3])
    assert len(printed) == len(ROWS) == 16
    for r in ROWS:
        assert printed[(r.table, r.backbone)] == (r.flops, r.params, r.box_ap), r
    assert row("RetinaNet", "ResNet-101").params == "56.7M"
    assert for_spec("cmt_s_mask_rcnn").flops == "249B"


def test_cmt_s_retinanet_counts_exactly() -> None:
    cost = detector_cost("cmt_s_retinanet")
    lateral = (128 + 256 + 512) * 256 + 3 * 256
    fpn = lateral + 3 * CONV3 + (512 * 256 * 9 + 256) + CONV3  # P6 from C5, P7 from relu(P6)
    head = 8 * CONV3 + (256 * 9 * 80 * 9 + 9 * 80) + (256 * 36 * 9 + 36)
    assert cost.part("backbone").params == CMT_S_BACKBONE
    assert cost.part("fpn").params == fpn == 3_770_368
    assert cost.part("retina_head").params == head == 6_463_220
    assert cost.params == 34_549_548
    assert cost.levels == [(100, 160), (50, 80), (25, 40), (13, 20), (7, 10)]
    per_level = 8 * 256 * 256 * 9 + 256 * 720 * 9 + 256 * 36 * 9
    assert cost.part("retina_head").macs == per_level * sum(h * w for h, w in cost.levels)


def test_cmt_s_mask_rcnn_counts_exactly() -> None:
    cost = detector_cost("cmt_s_mask_rcnn")
    fpn = (64 + 128 + 256 + 512) * 256 + 4 * 256 + 4 * CONV3
    rpn = CONV3 + (256 * 3 + 3) + (256 * 12 + 12)
    box = (256 * 49 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 81 + 81) + (1024 * 320 + 320)
    mask = 4 * CONV3 + (256 * 256 * 4 + 256) + (256 * 80 + 80)
    assert [cost.part(n).params for n in ("fpn", "rpn", "box_head", "mask_head")] == [fpn, rpn, box, mask]
    assert cost.params == CMT_S_BACKBONE + 20_151_024 == 44_466_984
    assert cost.part("box_head").macs == 1000 * (256 * 49 * 1024 + 1024 * 1024 + 1024 * 81 + 1024 * 320)
    assert cost.part("mask_head").macs == 100 * (4 * 14 * 14 * 256 * 256 * 9 + 14 * 14 * 256 * 256 * 4
                                                + 28 * 28 * 256 * 80)


def test_attention_macs_are_counted_and_reported_apart() -> None:
    cost = detector_cost("cmt_s_retinanet")
    by_hand = sum(depth * 2 * (h * w) * (h // k) * (w // k) * c for (h, w), depth, k, c in
                  zip([(200, 320), (100, 160), (50, 80), (25, 40)], [3, 3, 16, 3], [8, 4, 2, 1], [64, 128, 256, 512],
                      strict=True))
    assert cost.attention_macs == by_hand == backbone_attention_macs(load_detector_spec("cmt_s_retinanet").backbone,
                                                                    800, 1280)
    assert cost.macs_without_attention == cost.macs - by_hand
    assert by_hand > 0.2 * cost.macs  # at 1280x800 the matmuls are a large share


def test_a_child_spec_and_overrides_reach_the_backbone(tmp_path) -> None:
    child = tmp_path / "deeper.yaml"
    child.write_text("name: deeper\nextends: cmt_s_retinanet\nbackbone: {extends: cmt_s, stages: {2: {depth: 18}}}\n")
    spec = load_detector_spec(child)
    assert spec.backbone.stages[2].depth == 18 and spec.kind.value == "retinanet"
    assert spec.reference is None  # the paper's figures are for another network now
    assert is_detector(child) and is_detector("cmt_s_mask_rcnn") and not is_detector("cmt_s")
    same = load_detector_spec("cmt_s_retinanet", ["backbone.stages.2.depth=18"])
    assert detector_cost(same).params == detector_cost(spec).params > 34_549_548
    renamed = load_detector_spec("cmt_s_retinanet", ["name=mine"])
    assert renamed.reference is not None  # a name changes no count


@pytest.mark.parametrize(("changes", "field", "rule"), [
    ({"kind": "retina"}, "kind", "'retinanet', 'faster_rcnn' or 'mask_rcnn'"),
    ({"input": {"height": 810}}, "input", "not divisible by the total stride 32"),
    ({"fpn": {"levels": [1, 5]}}, "fpn.levels.1", "stage 5 does not exist"),
    ({"fpn": {"levels": [2, 1, 3]}}, "fpn.levels.1", "rise strictly"),
    ({"fpn": {"levels": [0, 1]}}, "fpn.levels.1", "the deepest level is the backbone's last stage"),
    ({"rpn": {}}, "rpn", "a retinanet has no rpn"),
    ({"retina_head": {"stacked_convz": 4}}, "retina_head.stacked_convz", "did you mean 'stacked_convs'"),
    ({"backbone": "cmt_q"}, "backbone.extends", "did you mean 'cmt_s'"),
    ({"backbone": {"extends": "cmt_s", "stages": {0: {"reduction": 7}}}}, "backbone.stages.0.reduction",
     "at the detector's 1280x800 input"),
    ({"num_classes": 0}, "num_classes", "greater than 0"),
])
def test_bad_detector_specs_name_the_field_and_rule(changes, field, rule) -> None:
    data = {"name": "bad", "kind": "retinanet", "backbone": "cmt_s", **changes}
    with pytest.raises(SpecError) as caught:
        load_detector_spec(data)
    assert any(p.field == field and rule in p.rule for p in caught.value.problems), caught.value.problems


def test_pooled_extra_levels_add_one_level() -> None:
    with pytest.raises(SpecError, match="max-pooling adds one level"):
        load_detector_spec("cmt_s_mask_rcnn", ["fpn.extra_levels=2"])


def test_check_names_the_swapped_columns_and_the_params_discrepancy(cli) -> None:
    result = cli("check", "cmt_s_retinanet", "cmt_s_mask_rcnn", "--json")
    assert result.code == 0, result.out + result.err
    data = json.loads(result.out)
    assert "swapped" in data["tables_7_8"]
    retina, mask = data["detectors"]
    assert retina["params"] == 34_549_548 and retina["verdict"] == "paper/code discrepancy"
    note = next(n for n in retina["notes"] if n.startswith("params"))
    assert "44.3M" in note and "34,549,548" in note
    assert mask["params"] == 44_466_984
    assert next(c for c in mask["checks"] if c["quantity"] == "params")["status"] == "matches paper"
    # FLOPs in mmcv's convention (no attention matmuls; bias adds, norms, ReLUs): the printed 231B and 249B
    assert [r["hook_count"] for r in (retina, mask)] == [230_877_335_080, 249_472_779_700]
    for result in (retina, mask):
        assert next(c for c in result["checks"] if c["quantity"] == "macs")["status"] == "matches paper"
        assert any("MACs w/o attention" in n and "invisible to a hook counter" in n for n in result["notes"])
    assert [r["matches"]["FLOPs (mmcv hooks)"] for r in data["conventions"]] == [True, True]
    assert [r["matches"]["MACs (conv, linear)"] for r in data["conventions"]] == [False, False]
    strict = cli("check", "cmt_s_retinanet", "--strict")
    assert strict.code == 1


def test_check_all_covers_backbones_and_detectors(cli) -> None:
    result = cli("check", "--all")
    assert result.code == 0, result.out + result.err
    assert "Tables 7 and 8" in result.out and "cmt_s_mask_rcnn" in result.out and "cmt_ti" in result.out
    assert "position biases at 1280x800" in result.out
    assert "Which convention Tables 7 and 8 print" in result.out and "315B" in result.out


def test_bad_detector_spec_is_one_line_exit_2(cli, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: mask_rcnn\nbackbone: cmt_s\nmask_head: {convs: -1}\n")
    result = cli("check", bad)
    assert result.code == 2
    assert "Traceback" not in result.err and "mask_head.convs" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_detector_check_never_imports_torch() -> None:
    code = ("import sys; from cmt_gen.cli.app import main\n"
            "try:\n    main(['check', 'cmt_s_retinanet', 'cmt_s_mask_rcnn'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=subprocess_env(), capture_output=True)


def test_a_detector_budget_is_checked_like_a_backbones(cli, tmp_path) -> None:
    spec = tmp_path / "small.yaml"
    spec.write_text("name: small\nextends: cmt_s_retinanet\nbackbone: cmt_xs\ninput: {height: 640, width: 640}\n"
                    "retina_head: {stacked_convs: 2}\nbudget: {params: 20M, macs: {max: 80G}}\n")
    result = cli("check", spec, "--json")
    assert result.code == 1
    (record,) = json.loads(result.out)["detectors"]
    assert record["verdict"] == "outside budget" and record["params"] == 21_038_964
    statuses = {c["quantity"]: c["status"] for c in record["checks"]}
    assert statuses == {"params": "outside budget", "macs": "within budget"}
    assert not any(c["against"] == "paper" for c in record["checks"])  # another network: the paper's figures left


def test_a_backbone_path_stays_relative_to_the_file_that_writes_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "bb.yaml").write_text("name: bb\nextends: cmt_xs\n")
    (tmp_path / "a" / "det.yaml").write_text("name: det\nkind: retinanet\nbackbone: bb.yaml\n")
    (tmp_path / "b" / "child.yaml").write_text("name: child\nextends: ../a/det.yaml\n")
    assert load_detector_spec(tmp_path / "b" / "child.yaml").backbone.name == "bb"
    monkeypatch.chdir(tmp_path / "a")  # a path typed with --set is relative to the working folder
    assert load_detector_spec("cmt_s_retinanet", ["backbone=bb.yaml"]).backbone.name == "bb"
    from cmt_gen.spec.detector_loading import detector_files

    files = {p.resolve() for p in detector_files(tmp_path / "b" / "child.yaml")}
    assert {(tmp_path / d).resolve() for d in ("b/child.yaml", "a/det.yaml", "a/bb.yaml")} <= files


def test_mask_rois_are_among_the_box_rois() -> None:
    with pytest.raises(SpecError, match="at most box_head.proposals"):
        load_detector_spec("cmt_s_mask_rcnn", ["mask_head.proposals=2000"])


@pytest.mark.parametrize(("argv", "words"), [
    (["export", "cmt_s_retinanet", "--format", "onnx", "-o", "x.onnx"], ["is a bundled detector spec"]),
    (["new", "x", "--from", "cmt_s_mask_rcnn", "-o", "x.yaml"], ["is a bundled detector spec"]),
    (["check", "cmt_s_retinanat"], ["did you mean 'cmt_s_retinanet'"]),
])
def test_a_detector_where_a_backbone_belongs_is_one_clear_line(cli, tmp_path, monkeypatch, argv, words) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*argv)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert all(w in result.err for w in words), result.err


def test_detector_files_without_kind_or_extending_a_backbone_say_so(cli, tmp_path) -> None:
    no_kind = tmp_path / "no_kind.yaml"
    no_kind.write_text("name: x\nbackbone: cmt_s\n")
    result = cli("check", no_kind)
    assert result.code == 2 and "kind: required field is missing" in result.err
    wrong_base = tmp_path / "wrong_base.yaml"
    wrong_base.write_text("name: x\nextends: cmt_s\nkind: retinanet\nbackbone: cmt_s\n")
    result = cli("check", wrong_base)
    assert result.code == 2 and "extends" in result.err and "backbone" in result.err
    assert len(result.err.strip().splitlines()) == 1
    as_backbone = tmp_path / "as_backbone.yaml"
    as_backbone.write_text("name: x\nkind: retinanet\nbackbone: cmt_s\n")
    result = cli("export", as_backbone, "--format", "onnx", "-o", tmp_path / "x.onnx")
    assert result.code == 2 and "this is a detector spec" in result.err


def test_provenance_figures_are_the_computed_counts() -> None:
    """The bundled spec's discrepancy line quotes counts: they must be what cmt-gen computes."""
    retina = load_detector_spec("cmt_s_retinanet")
    line = next(p for p in retina.provenance if p.startswith("Paper/code discrepancy"))
    assert f"{detector_cost(retina).params:,}" in line
    assert f"{detector_cost('cmt_s_mask_rcnn').params / 1e6:.2f}M" in line
