"""The peer detectors of Tables 7 and 8 under the bundled specs' FPN and heads, to test the counting conventions.

Each peer is an FPN-input body (an OrderedDict of the maps of `spec.fpn.levels`,
shallow first) in mmdetection's form, put under the same FPN and heads as
CMT-S by `build.assemble_detector`:

- ResNet-101: torchvision's resnet101 without avgpool and fc (mmdetection's
  ResNet has the same tensors), BatchNorm2d as mmdetection's 'BN', and its
  `frozen_stages=1`: the stem and the first stage do not require gradients,
  which is what mmcv's parameter count leaves out.
- Swin-T: timm's `swin_tiny_patch4_window7_224` with `features_only` at the
  detector's input size (it pads maps to whole 7x7 windows, as mmdetection's
  Swin does), plus one LayerNorm per output level (mmdetection's `norm{i}`), NCHW.
- PVT-S: the tables' PVT is v1; timm has only PVT v2 (`pvt_v2_b*`), so there is
  no body and the rows are skipped rather than substituted.

Only the bundled detector specs' non-backbone sections are used; their
`backbone` stays CMT-S, which the peer's body replaces.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cmt_gen.errors import CmtGenError

# Bundled detector specs whose FPN and heads the peers share, by table detector name.
SPEC_FOR = {"RetinaNet": "cmt_s_retinanet", "Mask R-CNN": "cmt_s_mask_rcnn"}
RESNET101_CHANNELS = (256, 512, 1024, 2048)  # C2-C5
SWIN_T_CHANNELS = (96, 192, 384, 768)
SWIN_T_TIMM = "swin_tiny_patch4_window7_224"


@dataclass(frozen=True)
class Peer:
    """A backbone of Tables 7/8 and whether this package can build it (`missing` says why not)."""

    backbone: str  # as the tables print it
    source: str
    missing: str | None = None


PEERS: dict[str, Peer] = {
    "ResNet-101": Peer("ResNet-101", "torchvision resnet101 (no avgpool, fc), mmdetection frozen_stages=1"),
    "Swin-T": Peer("Swin-T", f"timm {SWIN_T_TIMM}, features_only, + LayerNorm per output level (mmdetection)"),
    "PVT-S": Peer("PVT-S", "PVT v1 small", missing="timm provides only PVT v2 (pvt_v2_b0..b5), not PVT v1's PVT-S; "
                  "not substituted"),
}


def detector_spec(detector: str, height: int | None = None, width: int | None = None) -> Any:
    """The bundled CMT-S spec of `detector` ('RetinaNet' or 'Mask R-CNN'), at another input size if given."""
    from cmt_gen.spec.detector_loading import load_detector_spec

    if detector not in SPEC_FOR:
        raise CmtGenError(f"no bundled spec for {detector!r}; choose one of {', '.join(SPEC_FOR)}", field="detector")
    overrides = {}
    if height is not None:
        overrides["input.height"] = height
    if width is not None:
        overrides["input.width"] = width
    return load_detector_spec(SPEC_FOR[detector], overrides or None)


def _stage_check(levels: list[int], stages: int, backbone: str) -> None:
    if not levels or any(not 0 <= i < stages for i in levels) or sorted(set(levels)) != list(levels):
        raise CmtGenError(f"{backbone} has stages 0..{stages - 1}; FPN levels {levels} do not fit", field="fpn.levels")


def resnet101_body(levels: list[int], frozen_stages: int = 1) -> tuple[Any, list[int]]:
    """torchvision's ResNet-101 returning C2..C5 for `levels` (0 = C2), and those maps' channels.

    `frozen_stages` as mmdetection's ResNet: the stem and stages 1..frozen_stages
    stop requiring gradients (its `_freeze_stages`); the tensors are the same.
    """
    from torch import nn
    from torchvision.models import resnet101

    _stage_check(list(levels), 4, "ResNet-101")
    net = resnet101(weights=None)
    last = max(levels)

    class ResNetBody(nn.Module):
        """Stem and layer1..layer(last+1) of a torchvision ResNet; forward gives the chosen stages' maps."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
            self.layers = nn.ModuleList(getattr(net, f"layer{i + 1}") for i in range(last + 1))
            self.levels = list(levels)

        def forward(self, x: Any) -> OrderedDict:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            maps = []
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i in self.levels:
                    maps.append(x)
            return OrderedDict((str(i), m) for i, m in enumerate(maps))

    body = ResNetBody()
    frozen = [body.conv1, body.bn1, *list(body.layers)[:frozen_stages]] if frozen_stages >= 0 else []
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return body, [RESNET101_CHANNELS[i] for i in levels]


def swin_t_body(levels: list[int], height: int, width: int) -> tuple[Any, list[int]]:
    """timm's Swin-T for a height x width input returning the NCHW maps of `levels`, each after its own LayerNorm."""
    import timm
    from torch import nn

    _stage_check(list(levels), 4, "Swin-T")
    features = timm.create_model(SWIN_T_TIMM, pretrained=False, features_only=True, out_indices=tuple(levels),
                                 img_size=(height, width))
    channels = [SWIN_T_CHANNELS[i] for i in levels]

    class SwinBody(nn.Module):
        """mmdetection's SwinTransformer outputs: norm{i}(stage i's NHWC map), then NCHW."""

        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)

        def forward(self, x: Any) -> OrderedDict:
            maps = self.features(x)
            return OrderedDict((str(i), norm(m).permute(0, 3, 1, 2).contiguous())
                               for i, (norm, m) in enumerate(zip(self.norms, maps, strict=True)))

    return SwinBody(), channels


def peer_body(backbone: str, levels: list[int], height: int, width: int) -> tuple[Any, list[int]]:
    """The FPN-input body of a peer backbone and its maps' channels; a missing peer raises, naming why."""
    peer = PEERS.get(backbone)
    if peer is None:
        raise CmtGenError(f"no peer {backbone!r}; known: {', '.join(PEERS)}", field="backbone")
    if peer.missing:
        raise CmtGenError(f"{backbone} is not available: {peer.missing}", field="backbone")
    if backbone == "ResNet-101":
        return resnet101_body(levels)
    return swin_t_body(levels, height, width)


def peer_detector(backbone: str, detector: str, height: int | None = None,
                  width: int | None = None) -> tuple[Any, Any]:
    """(model, spec): a peer backbone under the FPN and heads of the bundled CMT-S `detector` spec.

    The spec (CMT-S's, at `height` x `width` if given) is what `counting_forward` reads
    for the input size and the RoIs; its backbone section is not used.
    """
    import torch

    from cmt_gen.detection.build import assemble_detector

    spec = detector_spec(detector, height, width)
    torch.manual_seed(0)
    body, channels = peer_body(backbone, list(spec.fpn.levels), spec.input.height, spec.input.width)
    return assemble_detector(spec, body, channels), spec
