"""Analytic cost of a detector spec (backbone, FPN, heads), computed without torch.

Same units as `cost.analytic`: exact learnable parameters, and MACs of
convolutions, linear layers and the backbone's attention matmuls for one image
at the spec's `input` size. Which MACs a two-stage detector has depends on how
many RoIs reach its heads; we count what mmdetection's FLOP counter runs
(`forward_dummy`): `box_head.proposals` RoIs (1000) through the box head and
`mask_head.proposals` (the first 100) through the mask head. The attention
matmuls (`q @ k^T`, `attn @ v`) are reported on their own too, since a
module-hook counter (mmcv's, behind the FLOPs printed in detection papers)
cannot see them and at 1280x800 they are a large share of the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmt_gen.cost.analytic import Cx, PartCost, PartTotals, analytic_cost, conv2d, linear
from cmt_gen.spec.detector import DetectorKind, DetectorSpec, ExtraLevelSource


@dataclass
class DetectorCost(PartTotals):
    """Per-part cost of a detector at one input size; `attention_macs` are inside the backbone's MACs."""

    attention_macs: int = 0
    levels: list[tuple[int, int]] = field(default_factory=list)  # (h, w) of every pyramid level, fine to coarse

    @property
    def macs_without_attention(self) -> int:
        return self.macs - self.attention_macs

    def as_dict(self) -> dict:
        return {"spec": self.spec_name, "input": [self.height, self.width], "params": self.params,
                "macs": self.macs, "attention_macs": self.attention_macs,
                "macs_without_attention": self.macs_without_attention,
                "levels": [list(level) for level in self.levels], "parts": [vars(p) for p in self.parts]}


def _part(name: str, cx: Cx, height: int, width: int) -> PartCost:
    return PartCost(name, cx.params, cx.macs, cx.acts, height, width)


def backbone_attention_macs(spec, height: int, width: int) -> int:
    """MACs of the two attention matmuls over every block: 2 x N x N_kv x C per block."""
    total = 0
    for stage, (h, w) in zip(spec.stages, spec.stage_sizes(height, width), strict=True):
        kv = (h // stage.reduction) * (w // stage.reduction)
        total += stage.depth * 2 * h * w * kv * stage.channels
    return total


def _fpn(spec: DetectorSpec, maps: list[tuple[int, int]], channels: list[int]) -> tuple[Cx, list[tuple[int, int]]]:
    """Lateral 1x1 and output 3x3 convs per level, then the extra levels; returns the cost and every level's size."""
    out = spec.fpn.out_channels
    total = Cx(0, 0)
    for (h, w), c in zip(maps, channels, strict=True):
        conv2d(_at(total, h, w), c, out, 1)
        conv2d(_at(total, h, w), out, out, 3, 1, 1)
    levels = list(maps)
    source_channels = channels[-1] if spec.fpn.extra_source == ExtraLevelSource.input else out
    for _ in range(spec.fpn.extra_levels):
        h, w = levels[-1]
        if spec.fpn.extra_source == ExtraLevelSource.pool:
            levels.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))  # max_pool2d(kernel 1, stride 2)
            continue
        step = _at(total, h, w)
        conv2d(step, source_channels, out, 3, 2, 1)
        levels.append((step.h, step.w))
        source_channels = out
    return total, levels


def _at(total: Cx, h: int, w: int) -> Cx:
    """A view of the running total at another map size (conv2d adds to it in place)."""
    total.h, total.w = h, w
    return total


def _shared_convs(levels: list[tuple[int, int]], layers: list[tuple[int, int, int]]) -> Cx:
    """Convs shared by every level: parameters once, MACs on each level. `layers`: (c_in, c_out, kernel)."""
    once = Cx(1, 1)
    for c_in, c_out, k in layers:
        conv2d(once, c_in, c_out, k, 1, k // 2)
    total = Cx(0, 0, params=once.params)
    for h, w in levels:
        per = Cx(h, w)
        for c_in, c_out, k in layers:
            conv2d(per, c_in, c_out, k, 1, k // 2)
        total.macs += per.macs
        total.acts += per.acts
    return total


def _retina_head(spec: DetectorSpec, levels: list[tuple[int, int]]) -> Cx:
    head, out = spec.retina_head, spec.fpn.out_channels
    branch = [(out, out, 3)] * head.stacked_convs
    layers = [*branch, (out, head.anchors * spec.num_classes, 3), *branch, (out, head.anchors * 4, 3)]
    return _shared_convs(levels, layers)


def _rpn(spec: DetectorSpec, levels: list[tuple[int, int]]) -> Cx:
    rpn, out = spec.rpn, spec.fpn.out_channels
    return _shared_convs(levels, [*[(out, out, 3)] * rpn.convs, (out, rpn.anchors, 1), (out, rpn.anchors * 4, 1)])


def _box_head(spec: DetectorSpec) -> Cx:
    """Per RoI, times the RoIs counted: fcs, a (classes + background)-way classifier, 4 box outputs per class."""
    box = spec.box_head
    per = Cx(1, 1)
    c_in = spec.fpn.out_channels * box.roi_size ** 2
    for _ in range(box.fcs):
        linear(per, c_in, box.fc_channels)
        c_in = box.fc_channels
    linear(per, c_in, spec.num_classes + 1)
    linear(per, c_in, spec.num_classes * 4)
    return Cx(0, 0, params=per.params, macs=per.macs * box.proposals, acts=per.acts * box.proposals)


def _mask_head(spec: DetectorSpec) -> Cx:
    """Per RoI, times the RoIs counted: 3x3 convs, a 2x2 stride-2 transposed conv, one 1x1 mask per class."""
    mask = spec.mask_head
    m = mask.roi_size
    per = Cx(m, m)
    c_in = spec.fpn.out_channels
    for _ in range(mask.convs):
        conv2d(per, c_in, mask.channels, 3, 1, 1)
        c_in = mask.channels
    per.params += c_in * mask.channels * 4 + mask.channels  # ConvTranspose2d(2, stride 2): MACs per input pixel
    per.macs += m * m * c_in * mask.channels * 4
    per.acts += (2 * m) ** 2 * mask.channels
    per.h, per.w = 2 * m, 2 * m
    conv2d(per, mask.channels, spec.num_classes, 1)
    return Cx(0, 0, params=per.params, macs=per.macs * mask.proposals, acts=per.acts * mask.proposals)


@dataclass
class TrunkCost:
    """What the FPN and heads need of a backbone, and its own cost: one entry per stage, shallow first."""

    name: str
    params: int
    macs: int
    attention_macs: int
    maps: list[tuple[int, int]]
    channels: list[int]
    hook_extras: int = 0  # what mmcv's hook counter adds to its conv/linear MACs (cost.hook_convention)
    frozen_params: int = 0  # parameters mmdetection freezes (`frozen_stages`), which mmcv does not count


def cmt_trunk(backbone, height: int, width: int) -> TrunkCost:
    """A CMT without its classifier at this input: stem and every stage (`hook_extras`: cost.hook_convention)."""
    trunk = analytic_cost(backbone, height, width)
    used = [p for p in trunk.parts if p.name != "head"]
    return TrunkCost(backbone.name, sum(p.params for p in used), sum(p.macs for p in used),
                     backbone_attention_macs(backbone, height, width), backbone.stage_sizes(height, width),
                     [stage.channels for stage in backbone.stages])


def detector_cost(spec: DetectorSpec | object, height: int | None = None, width: int | None = None,
                  trunk: TrunkCost | None = None) -> DetectorCost:
    """Parameters and MACs of a `DetectorSpec` (or a source `load_detector_spec` takes) per part; no model built.

    `trunk` replaces the spec's CMT backbone by another one's counts (the ResNet-101 rows of
    Tables 7 and 8: `cost.peers78`); the FPN and heads stay the spec's.
    """
    if not isinstance(spec, DetectorSpec):
        from cmt_gen.spec.detector_loading import load_detector_spec

        spec = load_detector_spec(spec)  # type: ignore[arg-type]
    h = spec.input.height if height is None else height
    w = spec.input.width if width is None else width
    trunk = cmt_trunk(spec.backbone, h, w) if trunk is None else trunk
    result = DetectorCost(spec.name, h, w)
    # the FPN's deepest level is the trunk's last stage (spec.detector's rule)
    result.parts.append(PartCost("backbone", trunk.params, trunk.macs, 0, *trunk.maps[-1]))
    result.attention_macs = trunk.attention_macs
    maps = [trunk.maps[i] for i in spec.fpn.levels]
    fpn, result.levels = _fpn(spec, maps, [trunk.channels[i] for i in spec.fpn.levels])
    result.parts.append(_part("fpn", fpn, *result.levels[-1]))
    if spec.kind == DetectorKind.retinanet:
        result.parts.append(_part("retina_head", _retina_head(spec, result.levels), *result.levels[-1]))
        return result
    result.parts.append(_part("rpn", _rpn(spec, result.levels), *result.levels[-1]))
    box = spec.box_head
    result.parts.append(_part("box_head", _box_head(spec), box.roi_size, box.roi_size))
    if spec.kind == DetectorKind.mask_rcnn:
        mask = spec.mask_head
        result.parts.append(_part("mask_head", _mask_head(spec), 2 * mask.roi_size, 2 * mask.roi_size))
    return result
