"""The typed schema of a detector spec: a CMT backbone, an FPN and the heads of RetinaNet or Mask R-CNN.

Defaults follow mmdetection's 1x configs, the conventions of the paper's
Tables 7 and 8 (the authors released no detection code): a RetinaNet takes
C3-C5 and adds P6 and P7 by 3x3 stride-2 convolutions from C5; a Mask R-CNN
takes C2-C5 and adds P6 by max-pooling P5. Sigmoid classifiers have one output
per class; softmax ones (the RoI box head) one more for the background; box
and mask predictors are per class (80 x 4 box outputs, 80 mask maps), as in
mmdetection. A section left out takes its kind's default, so a spec names only
what differs.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field, model_validator

from cmt_gen.spec.schema import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_RESOLUTION,
    Budget,
    CMTSpec,
    Float,
    Int,
    PrintedQuantity,
    _Strict,
)

MAX_EXTRA_LEVELS = 4
MAX_HEAD_CONVS = 16
MAX_PROPOSALS = 100_000
MAX_ROI_SIZE = 64
PAPER_INPUT = (800, 1280)  # height, width: "FLOPs are calculated on 1280x800 input" (Tables 7 and 8)


class DetectorKind(str, Enum):
    retinanet = "retinanet"
    faster_rcnn = "faster_rcnn"
    mask_rcnn = "mask_rcnn"


class ExtraLevelSource(str, Enum):
    """Where the FPN's extra, coarser levels (P6, P7) come from."""

    input = "input"  # 3x3 stride-2 convs, the first on the backbone's last map (mmdetection 'on_input')
    output = "output"  # the same convs, the first on the FPN's last output (P5)
    pool = "pool"  # max-pooling P5 (kernel 1, stride 2), no parameters: Mask R-CNN's P6


class FPNSpec(_Strict):
    out_channels: Int = Field(256, gt=0, le=MAX_CHANNELS, description="Channels of every pyramid level.")
    levels: list[Int] = Field(min_length=1, description="Backbone stages (0-based) that feed the FPN.")
    extra_levels: Int = Field(ge=0, le=MAX_EXTRA_LEVELS, description="Coarser levels added above the last one.")
    extra_source: ExtraLevelSource = Field(description="input (from the backbone map), output (from P5) or pool.")


class InputSize(_Strict):
    height: Int = Field(PAPER_INPUT[0], gt=0, le=MAX_RESOLUTION)
    width: Int = Field(PAPER_INPUT[1], gt=0, le=MAX_RESOLUTION)


class RetinaHeadSpec(_Strict):
    stacked_convs: Int = Field(4, ge=0, le=MAX_HEAD_CONVS, description="3x3 convs before each predictor.")
    scales_per_octave: Int = Field(3, gt=0, le=16, description="Anchor scales per level.")
    aspect_ratios: list[Float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1, max_length=16)

    @property
    def anchors(self) -> int:
        return self.scales_per_octave * len(self.aspect_ratios)


class RPNSpec(_Strict):
    convs: Int = Field(1, ge=1, le=MAX_HEAD_CONVS, description="3x3 convs before the objectness and box convs.")
    aspect_ratios: list[Float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1, max_length=16)

    @property
    def anchors(self) -> int:
        return len(self.aspect_ratios)


class BoxHeadSpec(_Strict):
    roi_size: Int = Field(7, gt=0, le=MAX_ROI_SIZE, description="RoIAlign output side.")
    fcs: Int = Field(2, ge=1, le=MAX_HEAD_CONVS, description="Shared fully connected layers.")
    fc_channels: Int = Field(1024, gt=0, le=MAX_CHANNELS)
    proposals: Int = Field(1000, gt=0, le=MAX_PROPOSALS,
                           description="RoIs per image the MACs count (mmdetection's dummy forward: 1000).")


class MaskHeadSpec(_Strict):
    roi_size: Int = Field(14, gt=0, le=MAX_ROI_SIZE, description="RoIAlign output side; masks are twice it.")
    convs: Int = Field(4, ge=0, le=MAX_HEAD_CONVS)
    channels: Int = Field(256, gt=0, le=MAX_CHANNELS)
    proposals: Int = Field(100, gt=0, le=MAX_PROPOSALS,
                           description="RoIs per image the MACs count (mmdetection's dummy forward: the first 100).")


class DetectorReference(_Strict):
    """The paper's figures for this detector, as printed (Tables 7 and 8 print them under swapped headers)."""

    params: PrintedQuantity | None = None
    macs: PrintedQuantity | None = Field(None, description="The table's FLOPs at `input`, as printed.")
    box_ap: Float | None = Field(None, ge=0, le=100)
    mask_ap: Float | None = Field(None, ge=0, le=100)
    table: str | None = None
    source: str | None = None


_DEFAULT_FPN = {
    DetectorKind.retinanet: {"levels": [1, 2, 3], "extra_levels": 2, "extra_source": "input"},
    DetectorKind.faster_rcnn: {"levels": [0, 1, 2, 3], "extra_levels": 1, "extra_source": "pool"},
    DetectorKind.mask_rcnn: {"levels": [0, 1, 2, 3], "extra_levels": 1, "extra_source": "pool"},
}
_SECTIONS = {
    DetectorKind.retinanet: ("retina_head",),
    DetectorKind.faster_rcnn: ("rpn", "box_head"),
    DetectorKind.mask_rcnn: ("rpn", "box_head", "mask_head"),
}
HEAD_SECTIONS = ("retina_head", "rpn", "box_head", "mask_head")


class DetectorSpec(_Strict):
    """A detector: `kind`, a CMT `backbone`, an FPN and the kind's heads, counted at `input`."""

    name: str = Field(min_length=1)
    description: str = ""
    kind: DetectorKind
    backbone: CMTSpec
    input: InputSize = InputSize()
    num_classes: Int = Field(80, gt=0, le=MAX_CLASSES, description="Object classes, background not included.")
    fpn: FPNSpec
    retina_head: RetinaHeadSpec | None = None
    rpn: RPNSpec | None = None
    box_head: BoxHeadSpec | None = None
    mask_head: MaskHeadSpec | None = None
    reference: DetectorReference | None = None
    provenance: list[str] = Field(default_factory=list)
    budget: Budget | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """Fill the FPN and head sections the kind needs and the spec left out (mmdetection's 1x defaults)."""
        if not isinstance(data, dict):
            return data
        try:
            kind = DetectorKind(data.get("kind"))
        except ValueError:  # the field's own error names the legal kinds; no second error for a missing fpn
            return {**data, "fpn": data.get("fpn") or _DEFAULT_FPN[DetectorKind.retinanet]}
        data = dict(data)
        fpn = data.get("fpn")
        if fpn is None or isinstance(fpn, dict):
            data["fpn"] = {**_DEFAULT_FPN[kind], **(fpn or {})}
        for section in _SECTIONS[kind]:
            if data.get(section) is None:
                data[section] = {}
        return data

    @model_validator(mode="after")
    def _check_design(self) -> DetectorSpec:
        problems = detector_problems(self)
        if problems:
            from cmt_gen.spec.schema import _DesignRuleError

            raise _DesignRuleError(problems)
        return self

    @property
    def pyramid_levels(self) -> int:
        return len(self.fpn.levels) + self.fpn.extra_levels


def detector_problems(spec: DetectorSpec) -> list[tuple[str, str]]:
    """Cross-field rules as (field path, rule) pairs; empty when the detector is legal."""
    from cmt_gen.spec.schema import design_problems

    problems: list[tuple[str, str]] = []
    wanted = _SECTIONS[spec.kind]
    for section in HEAD_SECTIONS:
        if section not in wanted and getattr(spec, section) is not None:
            problems.append((section, f"a {spec.kind.value} has no {section} (its sections: {', '.join(wanted)}); "
                             f"drop it, or with --set: {section}=null"))
    stages = len(spec.backbone.stages)
    levels = spec.fpn.levels
    for i, level in enumerate(levels):
        if not 0 <= level < stages:
            problems.append((f"fpn.levels.{i}",
                             f"stage {level} does not exist: the backbone has stages 0..{stages - 1}"))
        elif i and level <= levels[i - 1]:
            problems.append((f"fpn.levels.{i}", "levels rise strictly, shallow to deep, each stage once"))
    if levels and levels[-1] != stages - 1 and all(0 <= level < stages for level in levels):
        problems.append((f"fpn.levels.{len(levels) - 1}",
                         f"the deepest level is the backbone's last stage ({stages - 1}): stages after it would be "
                         "built and never run; remove them from the backbone instead"))
    if spec.fpn.extra_source == ExtraLevelSource.pool and spec.fpn.extra_levels > 1:
        problems.append(("fpn.extra_levels",
                         "max-pooling adds one level (P6); use extra_source input or output for more"))
    if spec.mask_head is not None and spec.box_head is not None and spec.mask_head.proposals > spec.box_head.proposals:
        problems.append(("mask_head.proposals", f"the mask head sees the first of the box head's RoIs: at most "
                         f"box_head.proposals ({spec.box_head.proposals}), got {spec.mask_head.proposals}"))
    if spec.kind == DetectorKind.retinanet and spec.pyramid_levels < 1:
        problems.append(("fpn", "a RetinaNet needs at least one pyramid level"))
    h, w = spec.input.height, spec.input.width
    for field, rule in design_problems(spec.backbone, h, w):
        where = "input" if field == "resolution" else f"backbone.{field}"
        problems.append((where, f"{rule} (at the detector's {w}x{h} input)"))
    return problems
