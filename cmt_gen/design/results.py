"""What a design search returns: each design with its cost and score, and the search's report."""

from __future__ import annotations

from dataclasses import dataclass, field

from cmt_gen.design.constraints import Constraint
from cmt_gen.design.cost_model import Space
from cmt_gen.spec.schema import CMTSpec


@dataclass
class Design:
    """One candidate: its spec (validated), exact cost, budget standing and rank score."""

    spec: CMTSpec
    params: int
    macs: int
    meets: bool
    score: float
    violation: float
    seconds: float | None = None  # predicted batch latency, when the search had a calibration
    departures: list[str] = field(default_factory=list)  # far from the CMT family's proportions (`family`)

    def value(self, constraint: Constraint, batch: int | None = None) -> float:
        """This design's value of a budget's quantity (speed: predicted, at the calibration's batch)."""
        if constraint.quantity == "params":
            return self.params
        if constraint.quantity == "macs":
            return self.macs
        return self.seconds if constraint.quantity == "latency" else (batch or 1) / self.seconds

    def delta(self, constraint: Constraint | None, batch: int | None = None) -> str:
        if constraint is None:
            return "-"
        return constraint.delta(self.value(constraint, batch))


@dataclass
class DesignResult:
    """Ranked designs (those meeting the budget first), and what the search covered."""

    base: CMTSpec
    base_label: str
    params: Constraint | None
    macs: Constraint | None
    designs: list[Design]
    feasible: bool
    evaluated: int
    seconds: float
    space: Space
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    speed: Constraint | None = None  # throughput or latency, met by predicted speed
    batch_size: int | None = None  # the calibration's batch, when there is one
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> Design | None:
        return self.designs[0] if self.feasible and self.designs else None

    @property
    def constraints(self) -> list[Constraint]:
        return [c for c in (self.params, self.macs, self.speed) if c is not None]

