"""The FLOPs convention of the paper's Tables 7 and 8, computed without torch: mmcv's module-hook count.

Detection papers of the time printed what mmdetection's `get_flops.py` prints:
mmcv's `get_model_complexity_info`, a forward hook per module of a known type.
Its rules (mmcv 1.x `cnn/utils/flops_counter.py`; `detection.conventions`
re-implements them on a built model, and the tests hold this count to that one):

- Conv2d: the MACs, plus one add per output element when it has a bias;
  ConvTranspose2d the same per input pixel, its bias on the output's H x H;
- Linear: the MACs (its bias is not counted);
- BatchNorm / LayerNorm: two per input element (affine);
- ReLU modules: one per output element; pooling modules: one per input element;
- everything functional counts zero: the attention matmuls (`q @ k^T`, `attn @ v`),
  softmax, GELU (not in mmcv's list), `F.interpolate` (the FPN's top-down path,
  the position bias resampling), `F.relu`, `F.max_pool2d` (Mask R-CNN's P6), RoIAlign.

The detector is counted as mmdetection builds it: ConvModule ReLUs in the
RetinaNet head, the mask head's convs and after its transposed conv, and after
each shared fc of the box head; `F.relu` after a single RPN conv.
"""

from __future__ import annotations

from cmt_gen.cost.detector import TrunkCost, cmt_trunk, detector_cost
from cmt_gen.spec.detector import DetectorKind, DetectorSpec, ExtraLevelSource


def cmt_hook_extras(backbone, height: int, width: int) -> int:
    """What mmcv adds to a CMT's conv and linear MACs: bias adds, norm elements, pooling inputs."""
    extra = 0
    h, w = (height + 1) // 2, (width + 1) // 2  # stem: 3x3 stride 2 pad 1, then two 3x3 stride 1
    extra += 3 * 3 * h * w * backbone.stem.channels  # 3 x (bias + BatchNorm twice)
    options = backbone.block
    for stage, (sh, sw) in zip(backbone.stages, backbone.stage_sizes(height, width), strict=True):
        n, c, e, k = sh * sw, stage.channels, stage.hidden, stage.reduction
        n_kv = (sh // k) * (sw // k)
        extra += 3 * n * c  # patch aggregation: conv bias, LayerNorm twice
        block = 2 * 2 * n * c  # LayerNorm 1 and 2
        block += n * c if options.lpu else 0  # LPU depthwise conv bias
        if k > 1:
            kind = options.reduction_kind.value
            block += n * c if kind == "avgpool" else 3 * n_kv * c  # pool input, or conv bias + norm twice
        block += 3 * n * e + 3 * n * e + 3 * n * c  # IRFFN: three convs with bias, each followed by a BatchNorm
        extra += stage.depth * block
    return extra


def _conv_bias_elements(levels: list[tuple[int, int]], channels: int) -> int:
    return channels * sum(h * w for h, w in levels)


def detector_hook_count(spec: DetectorSpec, trunk: TrunkCost | None = None) -> int:
    """mmcv's FLOPs of the detector as mmdetection builds it, for one image at `spec.input` (see module doc);
    `trunk`: another backbone's counts, with its `hook_extras`, as `detector_cost` takes it."""
    if trunk is None:
        h, w = spec.input.height, spec.input.width
        trunk = cmt_trunk(spec.backbone, h, w)
        trunk.hook_extras = cmt_hook_extras(spec.backbone, h, w)
    cost = detector_cost(spec, trunk=trunk)
    out = spec.fpn.out_channels
    total = cost.macs_without_attention + trunk.hook_extras
    own = cost.levels[: len(spec.fpn.levels)]
    total += 2 * _conv_bias_elements(own, out)  # lateral and output conv biases
    if spec.fpn.extra_source != ExtraLevelSource.pool:
        total += _conv_bias_elements(cost.levels[len(own):], out)
    levels = cost.levels
    if spec.kind == DetectorKind.retinanet:
        head = spec.retina_head
        per_level = 2 * head.stacked_convs * 2 * out + head.anchors * spec.num_classes + head.anchors * 4
        return total + sum(a * b for a, b in levels) * per_level  # conv bias + ReLU per stacked conv
    rpn = spec.rpn
    relus = rpn.convs if rpn.convs > 1 else 0  # one conv: F.relu; several: ConvModules with ReLU modules
    total += sum(a * b for a, b in levels) * (rpn.convs * out + relus * out + rpn.anchors * 5)
    box = spec.box_head
    total += box.proposals * box.fcs * box.fc_channels  # a ReLU module after each shared fc
    if spec.kind == DetectorKind.mask_rcnn:
        mask, m = spec.mask_head, spec.mask_head.roi_size
        per_roi = mask.convs * 2 * m * m * mask.channels  # conv bias + ReLU
        per_roi += 2 * (2 * m) ** 2 * mask.channels  # transposed conv bias, ReLU
        per_roi += (2 * m) ** 2 * spec.num_classes  # mask logits' bias
        total += mask.proposals * per_roi
    return total
