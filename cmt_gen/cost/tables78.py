"""Tables 7 and 8 of the CMT paper (COCO detection and instance segmentation) as data, figures as printed.

Both tables print their "# Params" and "# FLOPs" headers swapped: the column
headed "# Params" holds figures such as 231B and the one headed "# FLOPs"
figures such as 44.3M. The rows here keep each figure as printed and store it
under what it is (`flops` holds "231B"), with `SWAPPED_NOTE` saying so wherever
they are shown. FLOPs are "calculated on 1280x800 input" (the tables' captions);
the detectors are RetinaNet (Table 7) and Mask R-CNN (Table 8), 1x schedule.
Source: CMT (Guo et al., CVPR 2022), Tables 7 and 8; transcribed in
shared/reference/000_569af69430911ca3.txt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmt_gen.spec.quantity import printed_interval

SWAPPED_NOTE = ("Tables 7 and 8 print '# Params' and '# FLOPs' under swapped headers (231B under '# Params', "
                "44.3M under '# FLOPs'); they are read here the right way round")
INPUT = (800, 1280)  # height, width of the captions' "1280x800 input"


@dataclass(frozen=True)
class DetectionRow:
    """One backbone's row of Table 7 or 8, as printed ('-' is None)."""

    table: str  # "Table 7" | "Table 8"
    detector: str  # "RetinaNet" | "Mask R-CNN"
    backbone: str
    params: str  # as printed (under the '# FLOPs' header)
    flops: str  # as printed (under the '# Params' header)
    box_ap: str
    mask_ap: str | None = None
    spec: str | None = None  # the bundled detector spec of a CMT row

    def interval(self, field: str) -> tuple[float, float]:
        """The values that round to the printed figure: '231B' -> (230.5e9, 231.5e9)."""
        return printed_interval(getattr(self, field))

    def as_dict(self) -> dict:
        return asdict(self)


def _t7(backbone: str, flops: str, params: str, ap: str, spec: str | None = None) -> DetectionRow:
    return DetectionRow("Table 7", "RetinaNet", backbone, params, flops, ap, spec=spec)


def _t8(backbone: str, flops: str, params: str, box: str, mask: str, spec: str | None = None) -> DetectionRow:
    return DetectionRow("Table 8", "Mask R-CNN", backbone, params, flops, box, mask, spec=spec)


ROWS: tuple[DetectionRow, ...] = (
    _t7("ConT-M", "217B", "27.0M", "37.9"),
    _t7("ResNet-101", "315B", "56.7M", "38.5"),
    _t7("RelationNet++", "266B", "39.0M", "39.4"),
    _t7("ResNeXt-101-32x4d", "319B", "56.4M", "39.9"),
    _t7("PVT-S", "226B", "34.2M", "40.4"),
    _t7("Swin-T", "245B", "38.5M", "41.5"),
    _t7("Twins-SVT-S", "209B", "34.3M", "42.3"),
    _t7("Twins-PCPVT-S", "226B", "34.4M", "43.0"),
    _t7("CMT-S", "231B", "44.3M", "44.3", spec="cmt_s_retinanet"),
    _t8("ResNet-101", "336B", "63.2M", "40.0", "36.1"),
    _t8("PVT-S", "245B", "44.1M", "40.4", "37.8"),
    _t8("ResNeXt-101-32x4d", "340B", "62.8M", "41.9", "37.5"),
    _t8("Swin-T", "264B", "47.8M", "42.2", "39.1"),
    _t8("Twins-SVT-S", "228B", "44.0M", "42.7", "39.6"),
    _t8("Twins-PCPVT-S", "245B", "44.3M", "42.9", "40.0"),
    _t8("CMT-S", "249B", "44.5M", "44.6", "40.7", spec="cmt_s_mask_rcnn"),
)


def rows(table: str | None = None) -> list[DetectionRow]:
    return [r for r in ROWS if table is None or r.table == table]


def row(detector: str, backbone: str) -> DetectionRow:
    """A row by detector ('RetinaNet', 'Mask R-CNN') and backbone ('ResNet-101')."""
    for r in ROWS:
        if r.detector.lower() == detector.lower() and r.backbone.lower() == backbone.lower():
            return r
    raise KeyError(f"Tables 7 and 8 have no {detector} row for {backbone!r}")


def for_spec(spec_name: str) -> DetectionRow | None:
    """The row a bundled detector spec reproduces, if any."""
    return next((r for r in ROWS if r.spec == spec_name), None)
