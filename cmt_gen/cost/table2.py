"""Table 2 of the CMT paper (ImageNet results) as data: every row, figures kept as printed.

A figure printed as `0.6B` stands for any value from 0.55B to 0.65B; keeping
the printed string keeps that precision, so checks derive their tolerance
from it (`Table2Row.interval`) instead of from a guessed percentage.
`flops` are the paper's "# FLOPs", which are multiply-accumulates (MACs).

`timm` names the timm model of each peer where timm has one with the same
architecture (for EfficientNets, the `tf_` port of Google's original weights,
which the paper's rows quote, at the printed resolution); None where timm has
no such model (CPVT, T2T-ViT, PVT v1, CeiT, BoTNet-S1-128, CvT) or for CMT.
Source: CMT (Guo et al., CVPR 2022), Table 2; transcribed in
shared/reference/000_569af69430911ca3.txt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmt_gen.spec.quantity import parse_quantity, printed_interval

SOURCE = "CMT paper (CVPR 2022), Table 2"
# Where Table 2's throughput column was measured: by the authors on an NVIDIA V100 GPU; the paper does not
# print the precision or batch size. Every column showing these figures beside local ones names this.
THROUGHPUT_DEVICE = "V100 GPU"
THROUGHPUT_PRECISION = "precision not stated"
THROUGHPUT_LABEL = f"paper img/s ({THROUGHPUT_DEVICE})"
THROUGHPUT_NOTE = (f"paper img/s = Table 2's throughput, measured by the authors on a {THROUGHPUT_DEVICE} "
                   f"({THROUGHPUT_PRECISION}); not comparable with numbers measured here")


@dataclass(frozen=True)
class Table2Row:
    """One row of Table 2 as printed ('-' in the paper is None)."""

    model: str
    top1: str
    top5: str | None
    throughput: str | None
    params: str
    resolution: int
    flops: str
    ratio: str
    timm: str | None = None
    spec: str | None = None  # the bundled spec of a CMT row

    @property
    def is_cmt(self) -> bool:
        return self.model.startswith("CMT-")

    def value(self, field: str) -> float | None:
        """The printed figure as a number: params and flops in units, top-1 in percent."""
        text = getattr(self, field)
        return None if text is None else parse_quantity(text)

    def interval(self, field: str) -> tuple[float, float] | None:
        """The values that round to the printed figure: '0.6B' -> (0.55e9, 0.65e9)."""
        text = getattr(self, field)
        return None if text is None else printed_interval(text)

    def as_dict(self) -> dict:
        return asdict(self)


def _row(model: str, top1: str, top5: str | None, throughput: str | None, params: str, resolution: int,
         flops: str, ratio: str, timm: str | None = None, spec: str | None = None) -> Table2Row:
    return Table2Row(model, top1, top5, throughput, params, resolution, flops, ratio, timm, spec)


# In the paper's order: peers grouped with the CMT variant of similar accuracy.
ROWS: tuple[Table2Row, ...] = (
    _row("CPVT-Ti-GAP", "74.9", None, None, "6M", 224, "1.3B", "2.6"),
    _row("DenseNet-169", "76.2", "93.2", None, "14M", 224, "3.5B", "7", timm="densenet169"),
    _row("EfficientNet-B1", "79.1", "94.4", None, "7.8M", 240, "0.7B", "1.2", timm="tf_efficientnet_b1"),
    _row("CMT-Ti", "79.1", "94.5", "1323.5", "9.5M", 160, "0.6B", "1", spec="cmt_ti"),
    _row("ResNet-50", "76.2", "92.9", None, "25.6M", 224, "4.1B", "2.7", timm="resnet50"),
    _row("Coat-Lite Mini", "78.9", None, None, "11M", 224, "2.0B", "1.3", timm="coat_lite_mini"),
    _row("DeiT-S", "79.8", None, "940.4", "22M", 224, "4.6B", "3.1", timm="deit_small_patch16_224"),
    _row("EfficientNet-B3", "81.6", "95.7", "732.1", "12M", 300, "1.8B", "1.2", timm="tf_efficientnet_b3"),
    _row("CMT-XS", "81.8", "95.8", "857.4", "15.2M", 192, "1.5B", "1", spec="cmt_xs"),
    _row("ResNeXt-101-64x4d", "80.9", "95.6", None, "84M", 224, "32B", "8", timm="resnext101_64x4d"),
    _row("T2T-ViT-19", "81.2", None, None, "39.0M", 224, "8.0B", "2"),
    _row("PVT-M", "81.2", None, "528.1", "44.2M", 224, "6.7B", "1.7"),
    _row("Swin-T", "81.3", None, "755.2", "29M", 224, "4.5B", "1.1", timm="swin_tiny_patch4_window7_224"),
    _row("CPVT-S-GAP", "81.5", None, None, "23M", 224, "4.6B", "1.2"),
    _row("RegNetY-8GF", "81.7", None, "591.6", "39.2M", 224, "8.0B", "2", timm="regnety_080"),
    _row("CeiT-S", "82.0", "95.9", None, "24.2M", 224, "4.5B", "1.1"),
    _row("EfficientNet-B4", "82.9", "96.4", "349.4", "19M", 380, "4.2B", "1", timm="tf_efficientnet_b4"),
    _row("Twins-SVT-B", "83.1", None, None, "56.0M", 224, "8.3B", "2.1", timm="twins_svt_base"),
    _row("CMT-S", "83.5", "96.6", "562.5", "25.1M", 224, "4.0B", "1", spec="cmt_s"),
    _row("ViT-B/16 (384)", "77.9", None, "85.9", "85.8M", 384, "77.9B", "8.4", timm="vit_base_patch16_384"),
    _row("TNT-B", "82.8", "96.3", None, "65.6M", 224, "14.1B", "1.5", timm="tnt_b_patch16_224"),
    _row("DeiT-B (384)", "83.1", None, "85.9", "85.8M", 384, "55.6B", "6.0", timm="deit_base_patch16_384"),
    _row("CvT-21 (384)", "83.3", None, None, "31.5M", 384, "24.9B", "2.7"),
    _row("Swin-B", "83.3", None, "278.1", "88M", 224, "15.4B", "1.5", timm="swin_base_patch4_window7_224"),
    _row("Twins-SVT-L", "83.3", None, "288.0", "99.2M", 224, "14.8B", "1.7", timm="twins_svt_large"),
    _row("CeiT-S (384)", "83.3", "96.5", None, "24.2M", 384, "12.9B", "1.4"),
    _row("BoTNet-S1-128", "83.5", "96.5", None, "75.1M", 256, "19.3B", "2.1"),
    _row("EfficientNetV2-S", "83.9", None, None, "22M", 224, "8.8B", "1", timm="tf_efficientnetv2_s"),
    _row("EfficientNet-B6", "84.0", "96.8", "96.9", "43M", 528, "19.2B", "2.0", timm="tf_efficientnet_b6"),
    _row("CMT-B", "84.5", "96.9", "285.4", "45.7M", 256, "9.3B", "1", spec="cmt_b"),
    _row("EfficientNet-B7", "84.3", "97.0", "55.1", "66M", 600, "37B", "1.9", timm="tf_efficientnet_b7"),
    _row("CMT-L", "84.8", "97.1", "150.4", "74.7M", 288, "19.5B", "1", spec="cmt_l"),
)


def rows() -> list[Table2Row]:
    return list(ROWS)


def cmt_rows() -> list[Table2Row]:
    return [r for r in ROWS if r.is_cmt]


def row(model: str) -> Table2Row:
    """A row by its model name ('CMT-S', 'Swin-T') or, for CMT, its spec name ('cmt_s')."""
    key = model.strip().lower()
    for r in ROWS:
        if r.model.lower() == key or (r.spec is not None and r.spec == key.replace("-", "_")):
            return r
    raise KeyError(f"Table 2 has no row {model!r}")


def for_spec(spec_name: str) -> Table2Row | None:
    """The CMT row a bundled spec reproduces, if any."""
    return next((r for r in ROWS if r.spec == spec_name), None)
