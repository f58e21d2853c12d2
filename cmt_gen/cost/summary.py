"""A spec's stage table (sizes, tokens, widths, cost), computed without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmt_gen.cost.analytic import ModelCost, analytic_cost
from cmt_gen.spec.schema import CMTSpec


@dataclass
class StageRow:
    part: str
    height: int
    width: int
    tokens: int
    kv_tokens: int
    channels: int
    depth: int
    heads: int
    reduction: int
    hidden: int
    params: int
    macs: int


@dataclass
class SpecSummary:
    spec: CMTSpec
    cost: ModelCost
    rows: list[StageRow]

    def as_dict(self) -> dict:
        return {"spec": self.spec.name, "resolution": self.spec.resolution,
                "params": self.cost.params, "macs": self.cost.macs,
                "activations": self.cost.activations, "rows": [asdict(r) for r in self.rows]}


def summarize(spec: CMTSpec) -> SpecSummary:
    cost = analytic_cost(spec)
    stem, head = cost.part("stem"), cost.part("head")
    rows = [StageRow("stem", stem.height, stem.width, 0, 0, spec.stem.channels, 3, 0, 0, 0,
                     stem.params, stem.macs)]
    for stage, part in zip(spec.stages, cost.stages, strict=True):
        h, w = part.height, part.width
        rows.append(StageRow(part.name, h, w, h * w, (h // stage.reduction) * (w // stage.reduction),
                             stage.channels, stage.depth, stage.heads, stage.reduction, stage.hidden,
                             part.params, part.macs))
    rows.append(StageRow("head", head.height, head.width, 0, 0, spec.head.fc_channels, 1, 0, 0, 0,
                         head.params, head.macs))
    return SpecSummary(spec, cost, rows)
