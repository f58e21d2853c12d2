"""The ResNet-101 rows of Tables 7 and 8, counted without torch: the check that our conventions are the paper's.

ResNet-101 detectors are the rows whose backbone anyone can build (torchvision's
`resnet101`, the same network as mmdetection's ResNet). Counted with the
bundled CMT-S detectors' FPN and heads and in mmdetection's conventions, they
reproduce the printed figures only one way: parameters as mmcv counts them
(trainable ones only: mmdetection freezes the stem and first stage,
`frozen_stages=1`) and FLOPs as mmcv's hook counter counts them
(`cost.hook_convention`). The tests hold these analytic counts to torchvision's
built models and to the hook counter run on them (`detection.conventions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cmt_gen.cost.detector import TrunkCost, detector_cost
from cmt_gen.cost.hook_convention import detector_hook_count
from cmt_gen.cost.tables78 import DetectionRow, row
from cmt_gen.spec.detector import DetectorSpec

RESNET101_BLOCKS = (3, 4, 23, 3)
RESNET_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; each stage outputs 4x
MMDET_INPUT = (1280, 800)  # get_flops.py's default shape (H, W); either orientation gives the same counts


def _down(size: int, stride: int = 2) -> int:
    """Output side of a stride-2 conv or pool padded to keep 'same' alignment: ceil(size / 2)."""
    return (size - 1) // stride + 1


def resnet_trunk(height: int, width: int, blocks: tuple[int, ...] = RESNET101_BLOCKS, frozen_stages: int = 1,
                 name: str = "resnet101") -> TrunkCost:
    """torchvision's ResNet (v1.5: the stride on the 3x3 conv) without its classifier, as mmdetection uses it."""
    h, w = _down(height), _down(width)  # conv1 7x7 stride 2, BN, ReLU
    params = 3 * 64 * 49 + 2 * 64
    macs = h * w * 64 * 3 * 49
    extras = 3 * h * w * 64  # BN twice, ReLU
    extras += h * w * 64  # max-pool reads its input
    h, w = _down(h), _down(w)
    frozen = params
    maps, channels = [], []
    c_in = 64
    for stage, (depth, width_) in enumerate(zip(blocks, RESNET_WIDTHS, strict=True)):
        out = 4 * width_
        stage_params = 0
        for i in range(depth):
            stride = 2 if i == 0 and stage > 0 else 1
            ho, wo = (_down(h), _down(w)) if stride == 2 else (h, w)
            stage_params += c_in * width_ + 9 * width_ * width_ + width_ * out + 2 * (width_ + width_ + out)
            macs += h * w * c_in * width_ + ho * wo * (9 * width_ * width_ + width_ * out)
            extras += 3 * h * w * width_ + 3 * ho * wo * width_ + 2 * ho * wo * out + ho * wo * out  # BN x2, ReLU
            if i == 0:  # the projection shortcut: 1x1 conv (strided) and BN
                stage_params += c_in * out + 2 * out
                macs += ho * wo * c_in * out
                extras += 2 * ho * wo * out
            h, w, c_in = ho, wo, out
        params += stage_params
        if stage < frozen_stages:
            frozen += stage_params
        maps.append((h, w))
        channels.append(out)
    return TrunkCost(name, params, macs, 0, maps, channels, extras, frozen)


@dataclass
class ConventionRow:
    """One printed row beside our counts in each convention, and which convention lands on it."""

    detector: str
    backbone: str
    params: int
    trainable_params: int
    macs: int
    hook_count: int
    row: DetectionRow

    def matches(self) -> dict[str, bool]:
        p_low, p_high = self.row.interval("params")
        f_low, f_high = self.row.interval("flops")
        return {"params (all)": p_low <= self.params <= p_high,
                "params (trainable, mmcv)": p_low <= self.trainable_params <= p_high,
                "MACs (conv, linear)": f_low <= self.macs <= f_high,
                "FLOPs (mmcv hooks)": f_low <= self.hook_count <= f_high}


def resnet101_rows(detectors: list[DetectorSpec], height: int = MMDET_INPUT[0],
                   width: int = MMDET_INPUT[1]) -> list[ConventionRow]:
    """ResNet-101 with each detector's FPN and heads (the bundled CMT-S detectors: mmdetection's 1x configs)."""
    rows = []
    for spec in detectors:
        spec = spec.model_copy(update={"input": spec.input.model_copy(update={"height": height, "width": width})})
        trunk = resnet_trunk(height, width)
        cost = detector_cost(spec, trunk=trunk)
        printed = row("RetinaNet" if spec.kind.value == "retinanet" else "Mask R-CNN", "ResNet-101")
        rows.append(ConventionRow(printed.detector, "ResNet-101", cost.params, cost.params - trunk.frozen_params,
                                  cost.macs, detector_hook_count(spec, trunk), printed))
    return rows
