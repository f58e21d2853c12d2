"""A `DetectorSpec` becomes a torchvision RetinaNet, Faster R-CNN or Mask R-CNN whose parameters are the analytic count.

`assemble_detector` builds the FPN and heads around any backbone whose forward
returns the FPN's input maps as an OrderedDict ("0", "1", ... shallow first),
so reference detectors (a ResNet under the same FPN and heads) come from the
same code; `build_detector` puts a CMT there, optionally with released
ImageNet weights (the neck and heads always start fresh). `counting_forward`
is the path mmdetection's FLOP counter runs, for fvcore to trace against
`cost.detector.detector_cost`.

Conventions (torchvision's, documented on the classes in `heads`):
- RetinaNet: sigmoid classes, target and output labels 0..num_classes-1;
- Faster / Mask R-CNN: label 0 is the background, target and output labels
  are 1..num_classes (the background is never returned);
- anchors follow mmdetection: a RetinaNet level of stride s has
  `scales_per_octave` sizes 4s * 2^(i/scales_per_octave) (32..512 and their
  octave steps for P3-P7, as torchvision's RetinaNet up to its int rounding),
  an RPN level one size 8s (32..512 for P2-P6). A body's stage i has stride
  4 * 2^i, as CMT's and ResNet's C2-C5 do.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmt_gen.errors import CheckpointError, CmtGenError
from cmt_gen.model.network import CMTFeatures
from cmt_gen.model.pretrained_cfg import IMAGENET_MEAN, IMAGENET_STD
from cmt_gen.spec.detector import DetectorKind, DetectorSpec, ExtraLevelSource
from cmt_gen.spec.schema import CMTSpec

INSTALL = "pip install 'cmt-gen[detection]'"


def require_torchvision(field: str = "detector") -> None:
    """One clear line when the `[detection]` extra is missing, before anything is built."""
    try:
        import torchvision.models.detection  # noqa: F401
        import torchvision.ops  # noqa: F401
    except ImportError:
        raise CmtGenError(f"a detector needs torchvision: {INSTALL}", field=field) from None


class FPNBackbone(nn.Module):
    """A body and its FPN as torchvision's detectors read a backbone: an `out_channels` and an OrderedDict of levels.

    State-dict keys are torchvision's (`backbone.body.*`, `backbone.fpn.*`)."""

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


class CMTPyramidBody(CMTFeatures):
    """A headless CMT returning the maps of `out_indices` as an OrderedDict ("0", "1", ...), the FPN's input.

    A subclass rather than a wrapper, so its state dict is a CMT's (`stem.*`, `stages.*`) and a
    classification checkpoint loads into it with the same checks as `build_model`'s."""

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:  # type: ignore[override]
        return ordered(super().forward(x))


def ordered(maps: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """A backbone's maps as torchvision's FPN and RoIAlign read them: keys "0", "1", ... shallow first."""
    return OrderedDict((str(i), m) for i, m in enumerate(maps))


def level_strides(spec: DetectorSpec) -> list[int]:
    """Stride of every pyramid level, fine to coarse: 4 * 2^stage for the body's levels, doubling for each extra."""
    strides = [2 ** (i + 2) for i in spec.fpn.levels]
    for _ in range(spec.fpn.extra_levels):
        strides.append(strides[-1] * 2)
    return strides


def cmt_size_divisible(spec: CMTSpec) -> int:
    """The multiple a CMT's input sides must be: its total stride, and every stage's map divisible by its reduction."""
    multiple = spec.total_stride
    for i, stage in enumerate(spec.stages):
        multiple = math.lcm(multiple, 2 ** (i + 2) * stage.reduction)
    return multiple


def _extra_levels(spec: DetectorSpec, last_channels: int) -> nn.Module | None:
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from cmt_gen.detection.heads import ConvExtraLevels

    fpn = spec.fpn
    if fpn.extra_levels == 0:
        return None
    if fpn.extra_source == ExtraLevelSource.pool:
        return LastLevelMaxPool()  # one level (the spec's rule), named "pool"
    from_input = fpn.extra_source == ExtraLevelSource.input
    return ConvExtraLevels(last_channels if from_input else fpn.out_channels, fpn.out_channels, fpn.extra_levels,
                           from_input, first_name=fpn.levels[-1] + 3)


def assemble_detector(spec: DetectorSpec, body: nn.Module, in_channels: Sequence[int], *, size_divisible: int = 32,
                      image_mean: Sequence[float] = IMAGENET_MEAN,
                      image_std: Sequence[float] = IMAGENET_STD) -> nn.Module:
    """The spec's FPN and heads around `body`, a module returning the maps of `spec.fpn.levels` as an OrderedDict.

    `in_channels` are those maps' channels. Images are normalised with `image_mean`/`image_std`,
    resized so they fit `spec.input` (an image of that size is not resized) and batched by
    padding to a multiple of `size_divisible`. Nothing here depends on the body being a CMT.
    """
    require_torchvision()
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

    from cmt_gen.detection import heads

    in_channels = [int(c) for c in in_channels]
    if len(in_channels) != len(spec.fpn.levels):
        raise CmtGenError(f"{len(in_channels)} channel counts for {len(spec.fpn.levels)} FPN levels "
                          f"{list(spec.fpn.levels)}; give one per level", source=spec.name, field="in_channels")
    out, k = spec.fpn.out_channels, spec.num_classes
    fpn = FeaturePyramidNetwork(in_channels, out, extra_blocks=_extra_levels(spec, in_channels[-1]))
    backbone = FPNBackbone(body, fpn, out)
    strides = level_strides(spec)
    h, w = spec.input.height, spec.input.width
    transform: dict[str, Any] = dict(min_size=min(h, w), max_size=max(h, w), image_mean=list(image_mean),
                                     image_std=list(image_std), size_divisible=size_divisible)
    if spec.kind == DetectorKind.retinanet:
        retina = spec.retina_head
        n = retina.scales_per_octave
        sizes = tuple(tuple(4.0 * s * 2.0 ** (i / n) for i in range(n)) for s in strides)
        anchors = AnchorGenerator(sizes, (tuple(retina.aspect_ratios),) * len(strides))
        head = heads.retina_head(out, retina.anchors, k, retina.stacked_convs)
        return heads.SpecRetinaNet(backbone, k, anchor_generator=anchors, head=head, **transform)
    rpn, box = spec.rpn, spec.box_head
    names = [str(i) for i in range(len(in_channels))]  # RoIs pool from the body's levels, never the extra ones
    two_stage: dict[str, Any] = dict(
        rpn_anchor_generator=AnchorGenerator(tuple((8.0 * s,) for s in strides),
                                             (tuple(rpn.aspect_ratios),) * len(strides)),
        rpn_head=RPNHead(out, rpn.anchors, conv_depth=rpn.convs),
        box_roi_pool=MultiScaleRoIAlign(names, box.roi_size, sampling_ratio=2),
        box_head=heads.BoxFCHead(out * box.roi_size ** 2, box.fc_channels, box.fcs),
        box_predictor=heads.BoxPredictor(box.fc_channels, k),
        **transform,
    )
    if spec.kind == DetectorKind.faster_rcnn:
        return heads.SpecFasterRCNN(backbone, None, **two_stage)
    mask = spec.mask_head
    return heads.SpecMaskRCNN(
        backbone, None,
        mask_roi_pool=MultiScaleRoIAlign(names, mask.roi_size, sampling_ratio=2),
        mask_head=heads.MaskConvHead(out, mask.channels, mask.convs),
        mask_predictor=heads.MaskPredictor(mask.channels if mask.convs else out, mask.channels, k),
        **two_stage,
    )


def _load_spec(spec_or_source: Any, overrides: Any) -> DetectorSpec:
    if isinstance(spec_or_source, DetectorSpec):
        if overrides:
            raise TypeError("overrides apply when loading a spec; pass a name, path or dict")
        return spec_or_source
    from cmt_gen.spec.detector_loading import load_detector_spec

    return load_detector_spec(spec_or_source, overrides)


def load_backbone_weights(body: nn.Module, weights: str | Path | Mapping[str, Any]) -> str | None:
    """Load a classification checkpoint (cmt-gen's or the authors' layout) into a CMT body, all or nothing.

    The classifier head a released checkpoint carries is dropped (a body has none); every other key
    must fit, and a mismatch is the one-line `CheckpointError` every loader gives. Position biases
    trained at another resolution are resampled; the returned line (also a warning) says so.
    """
    from cmt_gen.model.convert import is_official_layout, load_state_dict_strict, read_checkpoint, unwrap_checkpoint

    if isinstance(weights, (str, Path)):
        source = str(weights)
        state = read_checkpoint(weights)
    elif isinstance(weights, Mapping):
        source = "backbone_weights"
        try:
            state = unwrap_checkpoint(weights)
        except CheckpointError as exc:
            raise CheckpointError(exc.rule, source=source) from None
    else:
        raise CmtGenError(f"a path or a state dict, got {type(weights).__name__}", field="backbone_weights")
    head = ("_fc.", "_bn.", "head.") if is_official_layout(state) else ("head.",)
    kept = {key: value for key, value in state.items() if not (isinstance(key, str) and key.startswith(head))}
    note = load_state_dict_strict(body, kept, source=source)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)
    return note


def build_detector(spec_or_source: DetectorSpec | str | Path | Mapping, overrides: Any = None,
                   backbone_weights: str | Path | Mapping[str, Any] | None = None) -> nn.Module:
    """The detector a spec describes around a CMT (`spec.backbone`), optionally with released backbone weights.

    `spec_or_source` is a `DetectorSpec`, a bundled detector name, a YAML path or a dict
    (`overrides` as for `load_detector_spec`). Images are normalised with the backbone's
    ImageNet mean and std and padded to the multiple the CMT needs.
    """
    spec = _load_spec(spec_or_source, overrides)
    require_torchvision()
    from cmt_gen.model.pretrained_cfg import pretrained_cfg_for

    body = CMTPyramidBody(spec.backbone, out_indices=list(spec.fpn.levels))
    if backbone_weights is not None:
        load_backbone_weights(body, backbone_weights)
    cfg = pretrained_cfg_for(spec.backbone)
    model = assemble_detector(spec, body, [spec.backbone.stages[i].channels for i in spec.fpn.levels],
                              size_divisible=cmt_size_divisible(spec.backbone),
                              image_mean=cfg["mean"], image_std=cfg["std"])
    model.spec = spec
    return model


def counting_forward(model: nn.Module, spec: DetectorSpec) -> nn.Module:
    """A module running the detector's MAC-bearing path for one image at `spec.input` (see `heads.CountingForward`);
    feed it `counting_input(spec)`. It shares `model`'s parameters."""
    require_torchvision()
    from cmt_gen.detection.heads import CountingForward

    box = spec.box_head.proposals if spec.box_head is not None else 0
    mask = spec.mask_head.proposals if spec.mask_head is not None else 0
    return CountingForward(model, spec.input.height, spec.input.width, box, mask)


def counting_input(spec: DetectorSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """The batch of one (already normalised) image `counting_forward` traces."""
    return torch.zeros(1, spec.backbone.in_channels, spec.input.height, spec.input.width, device=device)


__all__ = [
    "CMTPyramidBody", "FPNBackbone", "assemble_detector", "build_detector", "cmt_size_divisible", "counting_forward",
    "counting_input", "level_strides", "load_backbone_weights", "ordered", "require_torchvision",
]
