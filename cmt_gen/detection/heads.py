"""The FPN's extra levels, the heads and the detector classes, in mmdetection's 1x structure on torchvision's models.

torchvision's detection models run the losses, anchors, sampling and
post-processing; what differs from its defaults is here, each so that the
parameters are mmdetection's (and `cost.detector`'s) exactly:

- extra pyramid levels: N 3x3 stride-2 convs from the backbone's last map or
  from the FPN's last output (torchvision's `LastLevelP6P7` fixes N = 2 and
  silently switches to P5 when C5 already has the FPN's width);
- RetinaNet: `stacked_convs` convs per branch (torchvision fixes 4);
- box predictor: `num_classes + 1` scores but `num_classes * 4` box outputs
  (mmdetection's class-specific regression has no background box); a zero
  background block is padded in the forward, with no parameters, because
  torchvision's loss and post-processing index the boxes by label 0..num_classes;
- mask predictor: `num_classes` masks, padded with a zero background mask in
  the forward for the same reason (labels 1..num_classes index it).

This module imports torchvision at import time; `build` imports it only after
checking that torchvision is there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import Conv2dNormActivation

from cmt_gen.errors import CmtGenError


class ConvExtraLevels(ExtraFPNBlock):
    """`levels` coarser pyramid levels by 3x3 stride-2 convs (with bias), as mmdetection's FPN adds them.

    The first conv reads the backbone's last map (`from_input`, mmdetection's
    'on_input') or the FPN's last output; each next one reads the previous level
    as it is: mmdetection's RetinaNet config leaves `relu_before_extra_convs` at
    False (torchvision's `LastLevelP6P7` puts a ReLU before P7; counts are the same).
    """

    def __init__(self, in_channels: int, out_channels: int, levels: int, from_input: bool, first_name: int):
        super().__init__()
        self.from_input = from_input
        self.names = [f"p{first_name + i}" for i in range(levels)]
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1) for i in range(levels))
        for conv in self.convs:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        x = c[-1] if self.from_input else p[-1]
        for conv in self.convs:
            x = conv(x)
            p.append(x)
        names.extend(self.names)
        return p, names


def retina_head(in_channels: int, anchors: int, num_classes: int, stacked_convs: int) -> RetinaNetHead:
    """torchvision's RetinaNet head with `stacked_convs` 3x3 conv + ReLU layers per branch (0 allowed) instead of 4."""
    head = RetinaNetHead(in_channels, anchors, num_classes)
    for branch in (head.classification_head, head.regression_head):
        branch.conv = nn.Sequential(*(Conv2dNormActivation(in_channels, in_channels, norm_layer=None)
                                      for _ in range(stacked_convs)))
        for layer in branch.conv.modules():
            if isinstance(layer, nn.Conv2d):  # torchvision's (and mmdetection's) init of these convs
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)
    return head


class BoxFCHead(nn.Module):
    """`fcs` fully connected layers with ReLU on the flattened RoI features (torchvision names them fc6, fc7, ...)."""

    def __init__(self, in_features: int, channels: int, fcs: int):
        super().__init__()
        self.names = [f"fc{6 + i}" for i in range(fcs)]
        for i, name in enumerate(self.names):
            self.add_module(name, nn.Linear(in_features if i == 0 else channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        for name in self.names:
            x = F.relu(getattr(self, name)(x))
        return x


class BoxPredictor(nn.Module):
    """`num_classes + 1` softmax scores (0 is the background) and `num_classes * 4` box deltas, mmdetection's shapes.

    The forward returns (num_classes + 1) * 4 deltas, the first 4 zeros: the
    background's box is never used by torchvision's loss (positives only) and its
    detections are dropped after decoding, but both index the deltas by label.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)  # mmdetection's init of the predictors
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        deltas = self.bbox_pred(x)
        return self.cls_score(x), torch.cat([deltas.new_zeros(deltas.shape[0], 4), deltas], dim=1)


class MaskPredictor(nn.Module):
    """2x2 stride-2 transposed conv, ReLU, 1x1 conv to `num_classes` masks; a zero background mask padded in front.

    torchvision picks a RoI's mask by its label (1..num_classes) in the loss
    and the post-processing; the padded channel 0 takes no parameters.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, channels, 2, 2, 0)
        self.mask_fcn_logits = nn.Conv2d(channels, num_classes, 1)
        for layer in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.mask_fcn_logits(F.relu(self.conv5_mask(x)))
        n, _, h, w = logits.shape
        return torch.cat([logits.new_zeros(n, 1, h, w), logits], dim=1)


class MaskConvHead(nn.Sequential):
    """`convs` 3x3 conv + ReLU layers of `channels` (bias, no norm) on the RoI features; none is an identity."""

    def __init__(self, in_channels: int, channels: int, convs: int):
        super().__init__(*(Conv2dNormActivation(in_channels if i == 0 else channels, channels, norm_layer=None)
                           for i in range(convs)))
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)


# ---------------------------------------------------------------- detectors

def check_labels(targets: Any, low: int, high: int, convention: str) -> None:
    """Refuse target labels outside low..high in one line: torchvision would index out of range far from the cause
    (or on a GPU, stop the process with a device-side assert)."""
    if not isinstance(targets, (list, tuple)):
        return  # torchvision's own checks report the shape of the targets
    for i, target in enumerate(targets):
        labels = target.get("labels") if isinstance(target, dict) else None
        if not isinstance(labels, Tensor) or labels.numel() == 0:
            continue
        if labels.is_floating_point() or labels.is_complex():
            raise CmtGenError(f"labels are {str(labels.dtype).removeprefix('torch.')}; class labels are int64",
                              source="detector targets", field=f"{i}.labels")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < low or hi > high:
            bad = lo if lo < low else hi
            raise CmtGenError(f"label {bad} is outside {low}..{high} ({convention})",
                              source="detector targets", field=f"{i}.labels")


class SpecRetinaNet(RetinaNet):
    """torchvision's RetinaNet with `num_classes` sigmoid outputs and no background: labels are 0..num_classes-1.

    torchvision's convention for a sigmoid classifier: a target label indexes
    the class outputs directly, and detections come back with the same labels
    (class indices 1..80 prepared for the two-stage detectors are one less here).
    """

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if targets is not None:
            k = self.head.classification_head.num_classes
            check_labels(targets, 0, k - 1, f"a RetinaNet's {k} sigmoid classes have labels 0..{k - 1}, no background")
        return super().forward(images, targets)


class _BackgroundZero:
    """Two-stage target labels: 1..num_classes, 0 being the background (torchvision's softmax convention)."""

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if targets is not None:
            k = self.roi_heads.box_predictor.cls_score.out_features - 1
            check_labels(targets, 1, k, f"label 0 is the background; the {k} classes are 1..{k}")
        return super().forward(images, targets)


class SpecFasterRCNN(_BackgroundZero, FasterRCNN):
    """torchvision's Faster R-CNN; labels are 1..num_classes (0 is the background, never returned)."""


class SpecMaskRCNN(_BackgroundZero, MaskRCNN):
    """torchvision's Mask R-CNN; labels are 1..num_classes (0 is the background, never returned)."""


# ---------------------------------------------------------------- what the MACs count

def spread_rois(count: int, height: int, width: int) -> Tensor:
    """`count` deterministic boxes (x1, y1, x2, y2) inside a height x width image: centres on a regular grid, sides
    cycling over 32..512 px (clipped to the image) so every pyramid level gets some, as real proposals would."""
    i = torch.arange(count, dtype=torch.float32)
    cols = max(1, math.isqrt(count))
    rows = math.ceil(count / cols)
    cx = (i % cols + 0.5) * width / cols
    cy = (torch.div(i, cols, rounding_mode="floor") + 0.5) * height / rows
    side = 32.0 * 2.0 ** (i % 5)
    half_w = torch.minimum(side, torch.tensor(float(width))) / 2
    half_h = torch.minimum(side, torch.tensor(float(height))) / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


class CountingForward(nn.Module):
    """The MAC-bearing path of a detector for one image, as mmdetection's `forward_dummy` runs it for its FLOPs.

    Backbone and FPN, then a RetinaNet's head on every level; or an RPN head on
    every level, `box_rois` fixed RoIs through RoIAlign, the box head and its
    predictor, and the first `mask_rois` of them through the mask RoIAlign, head and
    predictor. No anchors, sampling, NMS or post-processing: their cost depends on
    the image content and no paper counts it. The input is a normalised batch of one.
    """

    def __init__(self, model: nn.Module, height: int, width: int, box_rois: int = 0, mask_rois: int = 0):
        super().__init__()
        self.model = model
        self.image_size = (height, width)
        self.box_rois, self.mask_rois = box_rois, mask_rois
        self.two_stage = hasattr(model, "roi_heads")
        rois = spread_rois(max(box_rois, mask_rois), height, width) if self.two_stage else torch.zeros(0, 4)
        self.register_buffer("rois", rois, persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        features = self.model.backbone(images)
        levels = list(features.values())
        if not self.two_stage:
            head = self.model.head
            return head.classification_head(levels), head.regression_head(levels)
        objectness, deltas = self.model.rpn.head(levels)
        roi_heads = self.model.roi_heads
        shapes = [self.image_size]
        rois = self.rois.to(images)  # the input's device and dtype
        box = roi_heads.box_head(roi_heads.box_roi_pool(features, [rois[: self.box_rois]], shapes))
        outputs = (*objectness, *deltas, *roi_heads.box_predictor(box))
        if getattr(roi_heads, "mask_head", None) is not None and self.mask_rois:
            masks = roi_heads.mask_roi_pool(features, [rois[: self.mask_rois]], shapes)
            outputs += (roi_heads.mask_predictor(roi_heads.mask_head(masks)),)
        return outputs
