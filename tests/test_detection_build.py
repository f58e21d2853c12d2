"""Detectors built from a `DetectorSpec` (`cmt_gen.detection.build`): what users rely on.

- The built detector has exactly the analytic parameters (`cost.detector.detector_cost`), which
  for the bundled CMT-S RetinaNet and Mask R-CNN are the hand counts of mmdetection's structure.
- fvcore's MACs of the MAC-bearing path (`counting_forward`, mmdetection's dummy forward) equal
  the analytic MACs, in total and per part (backbone, FPN, each head).
- It trains (finite losses, gradients down to the stem and the position biases) and infers on
  batches of differently sized images; labels follow torchvision: 0..num_classes-1 for RetinaNet,
  1..num_classes for the two-stage detectors (the background is never returned), and targets
  outside them are refused in one line.
- Released CMT weights (the authors' layout or cmt-gen's) load into the backbone strictly, the
  classifier dropped; a checkpoint of another variant is refused naming the file.
- `assemble_detector` builds the same FPN and heads around any backbone.

The fast tests use the tiny backbone (tests/data/tiny.yaml) at 256x320; CMT-S traces are slow.
"""

from __future__ import annotations

import json
import re
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

pytest.importorskip("torchvision")

from conftest import DATA, LAYOUT_FILE, tiny_spec_dict  # noqa: E402

from cmt_gen.cost.detector import detector_cost  # noqa: E402
from cmt_gen.detection.build import (  # noqa: E402
    assemble_detector,
    build_detector,
    counting_forward,
    counting_input,
    level_strides,
)
from cmt_gen.errors import CheckpointError, CmtGenError  # noqa: E402
from cmt_gen.spec.detector_loading import load_detector_spec  # noqa: E402

TINY = str(DATA / "tiny.yaml")
KINDS = ("retinanet", "faster_rcnn", "mask_rcnn")
# mmdetection's structure around the released CMT-S (24,315,960 parameters without its classifier), counted by hand.
HAND_COUNTS = {
    "cmt_s_retinanet": {"total": 34_549_548, "backbone.fpn": 3_770_368, "head": 6_463_220},
    "cmt_s_mask_rcnn": {"total": 44_466_984, "backbone.fpn": 2_607_104, "rpn": 593_935,
                        "roi_heads.box_head": 14_306_705 - 1024 * 81 - 81 - 1024 * 320 - 320,
                        "roi_heads.box_predictor": 1024 * 81 + 81 + 1024 * 320 + 320,
                        "roi_heads.mask_head": 4 * (256 * 256 * 9 + 256),
                        "roi_heads.mask_predictor": 256 * 256 * 4 + 256 + 256 * 80 + 80},
}
CMT_S_BACKBONE = 24_315_960


def tiny_spec(kind: str, height: int = 256, width: int = 320, **changes):
    """A small detector of `kind` on the tiny backbone; `changes` replace whole sections."""
    data: dict = {"name": f"tiny_{kind}", "kind": kind, "backbone": TINY, "input": {"height": height, "width": width},
                  "fpn": {"out_channels": 32}}
    if kind == "retinanet":
        data["retina_head"] = {"stacked_convs": 2}
    else:
        data["box_head"] = {"fc_channels": 64, "proposals": 50}
        if kind == "mask_rcnn":
            data["mask_head"] = {"channels": 32, "convs": 2, "proposals": 10}
    data.update(changes)
    return load_detector_spec(data)


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def targets_for(kind: str, sizes: list[tuple[int, int]], num_classes: int = 80) -> list[dict]:
    """COCO-style targets: boxes inside each image, labels in the kind's range, masks filling the boxes."""
    generator = torch.Generator().manual_seed(1)
    first = 0 if kind == "retinanet" else 1
    out = []
    for h, w in sizes:
        boxes = torch.tensor([[10.0, 20.0, 0.6 * w, 0.7 * h], [0.3 * w, 0.2 * h, w - 5.0, h - 8.0],
                              [0.1 * w, 0.5 * h, 0.35 * w, 0.95 * h]])
        labels = torch.randint(first, first + num_classes, (len(boxes),), generator=generator)
        labels[0] = first + num_classes - 1  # the highest class, where an off-by-one would index out of range
        target = {"boxes": boxes, "labels": labels}
        if kind == "mask_rcnn":
            masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist(), strict=True):
                m[y1:y2, x1:x2] = 1
            target["masks"] = masks
        out.append(target)
    return out


def images_of(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=generator) for h, w in sizes]


# ---------------------------------------------------------------- parameters

@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_bundled_detectors_have_the_hand_counted_parameters(name: str) -> None:
    spec = load_detector_spec(name)
    model = build_detector(spec)
    counts = HAND_COUNTS[name]
    assert numel(model) == counts["total"] == detector_cost(spec).params
    assert numel(model.backbone.body) == CMT_S_BACKBONE
    modules = dict(model.named_modules())
    for part, expected in counts.items():
        if part != "total":
            assert numel(modules[part]) == expected, part


CASES = [
    ("retinanet", {}),
    ("retinanet", {"retina_head": {"stacked_convs": 0, "scales_per_octave": 2, "aspect_ratios": [1.0]}}),
    ("retinanet", {"fpn": {"out_channels": 16, "levels": [0, 1, 2, 3], "extra_levels": 3, "extra_source": "output"}}),
    ("retinanet", {"fpn": {"out_channels": 48, "levels": [2, 3], "extra_levels": 0, "extra_source": "input"}}),
    ("faster_rcnn", {}),
    ("faster_rcnn", {"fpn": {"out_channels": 24, "levels": [1, 2, 3], "extra_levels": 2, "extra_source": "input"},
                     "rpn": {"convs": 2, "aspect_ratios": [1.0, 2.0]},
                     "box_head": {"fcs": 3, "fc_channels": 40, "roi_size": 5}}),
    ("mask_rcnn", {}),
    ("mask_rcnn", {"mask_head": {"convs": 0, "channels": 24, "roi_size": 7, "proposals": 10}, "num_classes": 3}),
]


@pytest.mark.parametrize(("kind", "changes"), CASES)
def test_parameters_equal_the_analytic_count(kind: str, changes: dict) -> None:
    spec = tiny_spec(kind, **changes)
    model = build_detector(spec)
    cost = detector_cost(spec)
    assert numel(model) == cost.params
    assert numel(model.backbone.body) == cost.part("backbone").params
    assert numel(model.backbone.fpn) == cost.part("fpn").params


# ---------------------------------------------------------------- training and inference

@pytest.mark.parametrize("kind", KINDS)
def test_a_training_step_reaches_the_backbone(kind: str) -> None:
    torch.manual_seed(0)
    spec = tiny_spec(kind)
    model = build_detector(spec).train()
    sizes = [(256, 320), (224, 288)]  # the second is resized to fit and padded into the batch
    losses = model(images_of(sizes), targets_for(kind, sizes))
    expected = {"classification", "bbox_regression"} if kind == "retinanet" else {
        "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} | (
        {"loss_mask"} if kind == "mask_rcnn" else set())
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    body = model.backbone.body
    for weight in (body.stem[0].conv.weight, body.stages[0].position_bias, body.stages[3].position_bias):
        assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_inference_returns_one_dict_per_image_in_torchvisions_label_convention(kind: str) -> None:
    torch.manual_seed(0)
    spec = tiny_spec(kind)
    model = build_detector(spec).eval()
    if kind == "retinanet":
        model.score_thresh = 0.0  # an untrained head scores every class about 0.01: keep them, to see the labels
    else:
        model.roi_heads.score_thresh = 0.0
    sizes = [(256, 320), (200, 300)]
    with torch.no_grad():
        outputs = model(images_of(sizes))
    assert isinstance(outputs, list) and len(outputs) == 2
    k = spec.num_classes
    low, high = (0, k - 1) if kind == "retinanet" else (1, k)
    for out, (h, w) in zip(outputs, sizes, strict=True):
        keys = {"boxes", "labels", "scores"} | ({"masks"} if kind == "mask_rcnn" else set())
        assert set(out) == keys
        n = len(out["boxes"])
        assert n > 0 and out["boxes"].shape == (n, 4) and out["scores"].shape == (n,)
        labels = out["labels"]
        assert labels.dtype == torch.int64 and low <= int(labels.min()) <= int(labels.max()) <= high
        assert (out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all()  # in the original image
        if kind == "mask_rcnn":
            assert out["masks"].shape == (n, 1, h, w)


@pytest.mark.parametrize(("kind", "label"), [("retinanet", 80), ("retinanet", -1), ("faster_rcnn", 0),
                                             ("mask_rcnn", 81)])
def test_labels_outside_the_convention_are_refused_in_one_line(kind: str, label: int) -> None:
    spec = tiny_spec(kind)
    model = build_detector(spec).train()
    sizes = [(256, 320)]
    targets = targets_for(kind, sizes)
    targets[0]["labels"][1] = label
    with pytest.raises(CmtGenError, match=rf"0\.labels: label {label} is outside") as info:
        model(images_of(sizes), targets)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- backbone weights

def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return model.backbone.body.state_dict()


@pytest.mark.parametrize("layout", ["released", "ours"])
def test_released_weights_load_into_the_backbone(tmp_path, layout: str) -> None:
    from cmt_gen.model.convert import released_state_dict
    from cmt_gen.model.network import build_model

    spec = tiny_spec("mask_rcnn")
    torch.manual_seed(3)
    classifier = build_model(spec.backbone).state_dict()  # with its classifier head, as released
    state = released_state_dict(classifier) if layout == "released" else classifier
    path = tmp_path / "cmt_tiny.pth"
    torch.save({"model": state}, path)
    torch.manual_seed(4)
    model = build_detector(spec, backbone_weights=path)
    loaded = _backbone_state(model)
    assert set(loaded) == {k for k in classifier if not k.startswith("head.")}
    for key, value in loaded.items():
        assert torch.equal(value, classifier[key]), key
    fresh = build_detector(spec, backbone_weights=state)  # a state dict in memory loads the same
    assert all(torch.equal(v, loaded[k]) for k, v in _backbone_state(fresh).items())


def test_the_authors_cmt_s_layout_loads(tmp_path) -> None:
    """Every key and shape of the released cmt_small.pth (tests/data), the classifier included."""
    layout = json.loads(LAYOUT_FILE.read_text())["cmt_s"]["state_dict"]
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.zeros(shape, dtype=torch.int64) if k.endswith("num_batches_tracked")
                 else torch.randn(shape, generator=generator)) for k, shape in layout.items()}
    path = tmp_path / "cmt_small.pth"
    torch.save(state, path)
    model = build_detector("cmt_s_retinanet", backbone_weights=path)
    loaded = _backbone_state(model)
    assert torch.equal(loaded["stages.2.blocks.3.attn.reduce.conv.weight"], state["blocks_c.3.attn.sr.0.weight"])
    assert torch.equal(loaded["stem.0.conv.weight"], state["stem_conv1.weight"])
    assert len(loaded) == len(state) - sum(k.startswith(("_fc.", "_bn.", "head.")) for k in state)


def test_a_checkpoint_of_another_variant_is_refused_naming_the_file(tmp_path) -> None:
    from cmt_gen.model.convert import released_state_dict
    from cmt_gen.model.network import build_model

    other = tiny_spec_dict(stem={"channels": 12})
    path = tmp_path / "other_variant.pth"
    torch.save(released_state_dict(build_model(other).state_dict()), path)
    refusal = re.escape(str(path)) + r": checkpoint does not fit .*wrong shape"
    with pytest.raises(CheckpointError, match=refusal) as info:
        build_detector(tiny_spec("retinanet"), backbone_weights=path)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no such file"):
        build_detector(tiny_spec("retinanet"), backbone_weights=tmp_path / "missing.pth")


def test_position_biases_of_another_resolution_are_resampled_on_load(tmp_path) -> None:
    from cmt_gen.model.network import build_model

    path = tmp_path / "tiny_at_128.pth"
    torch.save(build_model(tiny_spec_dict(resolution=128)).state_dict(), path)
    with pytest.warns(UserWarning, match="resampled 4 position biases"):
        model = build_detector(tiny_spec("faster_rcnn"), backbone_weights=path)
    assert model.backbone.body.stages[0].position_bias.shape == (1, 256, 16)  # the spec's 64 px grid, reduced by 4


# ---------------------------------------------------------------- MACs

def traced_macs(model: nn.Module, spec) -> dict[str, int]:
    """fvcore's conv + linear + matmul + attention MACs of `counting_forward`, in total and per module."""
    pytest.importorskip("fvcore")
    from cmt_gen.check.measured import MAC_OPERATORS, flop_count_analysis

    model.eval()
    with torch.no_grad():
        analysis = flop_count_analysis(counting_forward(model, spec), (counting_input(spec),))
        by_module = analysis.by_module_and_operator()
        unsupported = set(analysis.unsupported_ops())
    # What fvcore has no handle for must be free of MACs: RoIAlign (bilinear taps), its level mapping, max-pooling.
    assert unsupported <= {"torchvision::roi_align", "aten::where", "aten::scatter", "aten::sub", "aten::sqrt",
                           "aten::div", "aten::log2", "aten::max_pool2d"}, unsupported
    return {name: sum(v for k, v in ops.items() if k in MAC_OPERATORS) for name, ops in by_module.items()}


PARTS = {"backbone": ["model.backbone.body"], "fpn": ["model.backbone.fpn"], "retina_head": ["model.head"],
         "rpn": ["model.rpn.head"], "box_head": ["model.roi_heads.box_head", "model.roi_heads.box_predictor"],
         "mask_head": ["model.roi_heads.mask_head", "model.roi_heads.mask_predictor"]}


def assert_macs_equal(spec) -> None:
    model = build_detector(spec)
    traced = traced_macs(model, spec)
    cost = detector_cost(spec)
    assert traced[""] == cost.macs
    for part in cost.parts:
        assert sum(traced.get(m, 0) for m in PARTS[part.name]) == part.macs, part.name


@pytest.mark.parametrize(("kind", "changes"), [(k, {}) for k in KINDS] + [CASES[2], CASES[5], CASES[7]])
def test_traced_macs_equal_the_analytic_count(kind: str, changes: dict) -> None:
    assert_macs_equal(tiny_spec(kind, 256, 384, **changes))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HAND_COUNTS))
def test_cmt_s_traced_macs_equal_the_analytic_count(name: str) -> None:
    assert_macs_equal(load_detector_spec(name, {"input.height": 512, "input.width": 640}))


# ---------------------------------------------------------------- sizes and the generic form

def test_a_non_square_input_is_not_resized_and_counts_hold() -> None:
    spec = tiny_spec("mask_rcnn", 320, 448)
    model = build_detector(spec).eval()
    batch, _ = model.transform([torch.rand(3, 320, 448), torch.rand(3, 160, 224), torch.rand(3, 160, 160)])
    assert batch.image_sizes == [(320, 448), (320, 448), (320, 320)]  # the spec's size as it is, others fitted to it
    assert tuple(batch.tensors.shape) == (3, 3, 320, 448)
    with torch.no_grad():
        outputs = model([torch.rand(3, 320, 448)])
    assert outputs[0]["masks"].shape[-2:] == (320, 448)
    assert numel(model) == detector_cost(spec).params
    assert_macs_equal(spec)


def test_assemble_detector_needs_no_cmt() -> None:
    """A plain conv body with C3-C5 at strides 8, 16, 32 under the spec's FPN and RetinaNet head."""

    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c2 = nn.Conv2d(3, 8, 4, 4)
            self.c3, self.c4, self.c5 = nn.Conv2d(8, 12, 2, 2), nn.Conv2d(12, 20, 2, 2), nn.Conv2d(20, 28, 2, 2)

        def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
            c3 = self.c3(self.c2(x))
            c4 = self.c4(c3)
            return OrderedDict([("0", c3), ("1", c4), ("2", self.c5(c4))])

    spec = tiny_spec("retinanet")
    assert spec.fpn.levels == [1, 2, 3] and level_strides(spec) == [8, 16, 32, 64, 128]
    body = Body()
    model = assemble_detector(spec, body, [12, 20, 28])
    neck_and_head = detector_cost(spec).params - detector_cost(spec).part("backbone").params
    # only the lateral 1x1 convs and P6's 3x3 conv (from C5) see the body: the tiny CMT's 24, 32, 48 -> 12, 20, 28
    assert numel(model) - numel(body) == neck_and_head - 32 * (24 + 32 + 48 - 12 - 20 - 28) - 9 * 32 * (48 - 28)
    sizes = model.anchor_generator.sizes
    assert [round(s[0]) for s in sizes] == [32, 64, 128, 256, 512]
    assert sizes[0][1] == pytest.approx(32 * 2 ** (1 / 3))
    with torch.no_grad():
        outputs = model.eval()([torch.rand(3, 256, 320)])
    assert set(outputs[0]) == {"boxes", "labels", "scores"}
    with pytest.raises(CmtGenError, match="2 channel counts for 3 FPN levels"):
        assemble_detector(spec, body, [12, 20])


def test_without_torchvision_the_error_says_what_to_install(monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(CmtGenError, match=re.escape("needs torchvision: pip install 'cmt-gen[detection]'")):
        build_detector(tiny_spec("retinanet"))
