"""Find CMT specs that meet a parameter and MAC budget, with the exact analytic counter.

Budgets. Each of params and MACs may be omitted, a range (`4G..6G`, `..6G`,
`4G..`) or a single value, which means a target within a tolerance: 1% for
params and 2% for MACs by default (`--tolerance 0.5%` for both, or `1%,3%`).

Design space around a base spec (default: the bundled spec nearest the
budget): width multipliers 0.25-4 (rounded as in `cmt_gen.scaling`), one
expansion ratio for all stages from 2 to 6 in steps of 0.25 plus the base's
own, legal resolutions from half to twice the base's unless one is given, and a
depth for every stage: the stages other than the deepest follow the base's
pattern times a multiplier, the deepest is solved for. Heads, reduction ratios,
head and block options stay as in the base.

How it searches. The cost of a spec is linear in its depths:
cost = fixed(resolution, widths) + sum_i depth_i * block_i(resolution, width_i,
hidden_i), where `fixed` and `block_i` come from the very functions
`analytic_cost` sums (`CostModel`). So for every resolution, width and
expansion the deepest stage's depth that meets both budgets is an interval
solved in closed form, and thousands of designs cost microseconds each. A
second pass moves each of the best designs' other depths by one, the
expansion by 0.125 and the width by one rounding step. Every design returned
is then built as a spec and recounted with `analytic_cost`.

Ranking, among designs that meet the budget (lower is better): how far the
design strays from the base's proportions (depth pattern, balance of the
width, depth and resolution multipliers as compound scaling prescribes,
expansion ratio), plus for a target half its relative miss in tolerances, and
for a range with a maximum twice the unused share of the range ("under 6G"
prefers designs close to 6G; "at least 4G" prefers those close to 4G).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cmt_gen.complexity import Cx, classifier_head_cost, cmt_stage_cost, stem_cost
from cmt_gen.quantity import format_quantity, parse_quantity
from cmt_gen.scaling import (
    DEFAULT_DIVISOR,
    DesignError,
    Shape,
    check_divisor,
    check_resolution,
    derive_spec,
    resolution_step,
    resolve_base,
    round_depth,
    scaled_widths,
)
from cmt_gen.spec import CMTSpec

DEFAULT_TOLERANCE = (0.01, 0.02)  # params, MACs


# ---------------------------------------------------------------- budgets

@dataclass(frozen=True)
class Constraint:
    """Allowed values of one quantity: [lo, hi], from a range or a target and tolerance."""

    quantity: str
    lo: float
    hi: float
    target: float | None = None
    tolerance: float | None = None

    def meets(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def violation(self, value: float) -> float:
        """Relative distance outside the allowed values; 0 inside."""
        if value < self.lo:
            return (self.lo - value) / self.lo
        if value > self.hi:
            return (value - self.hi) / self.hi
        return 0.0

    def fit(self, value: float) -> float:
        """Ranking term: 0 for a perfect value, about 1 at the edge of what is allowed."""
        if self.target is not None:
            return 0.5 * abs(value / self.target - 1) / self.tolerance
        if math.isinf(self.hi):  # "at least": the least design that meets it
            return 2.0 * min(1.0, max(0.0, value - self.lo) / self.lo) if self.lo > 0 else 0.0
        if self.hi <= self.lo:
            return 0.0
        return 2.0 * max(0.0, self.hi - value) / (self.hi - self.lo)

    def delta(self, value: float) -> str:
        """How a value sits against the budget, for tables."""
        if self.target is not None:
            return f"{(value - self.target) / self.target * 100:+.2f}%"
        if value < self.lo:
            return f"{(value - self.lo) / self.lo * 100:+.1f}% under"
        if value > self.hi:
            return f"{(value - self.hi) / self.hi * 100:+.1f}% over"
        return "in range"

    @property
    def label(self) -> str:
        return "MACs" if self.quantity == "macs" else self.quantity

    def describe(self) -> str:
        if self.target is not None:
            return f"{format_quantity(self.target)} within {self.tolerance * 100:g}%"
        low = format_quantity(self.lo) if self.lo > 0 else ""
        high = "" if math.isinf(self.hi) else format_quantity(self.hi)
        return f"{low}..{high}"


def upper_limits(*constraints: Constraint | None) -> dict[str, float]:
    """The finite maxima of a budget, as a spec's `budget:` records them (`cmt-gen check` reads them)."""
    return {c.quantity: c.hi for c in constraints if c is not None and math.isfinite(c.hi)}


def parse_tolerance(value: str | float | Sequence[float] | None) -> tuple[float, float]:
    """`1%` (both), `1%,2%` (params, MACs), 0.01 or (0.01, 0.02) -> (params, MACs) fractions."""
    if value is None:
        return DEFAULT_TOLERANCE
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (1, 2) or not all(parts):
            raise DesignError(f"write a tolerance as 1% or 1%,2% (params, MACs), got {value!r}", field="tolerance")
        fractions = [_fraction(p) for p in parts]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        fractions = [float(value)]
    else:
        fractions = [float(v) for v in value]
    if len(fractions) == 1:
        fractions *= 2
    for f in fractions:
        if not math.isfinite(f) or not 0 < f <= 0.5:
            raise DesignError(f"a tolerance is between 0 and 50%, got {f * 100:g}%", field="tolerance")
    return fractions[0], fractions[1]


def _fraction(text: str) -> float:
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise DesignError(f"{text!r} is not a tolerance: write 1% or 0.01", field="tolerance") from None


def _quantity(text: object, quantity: str) -> float:
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise DesignError(str(exc), field=f"--{quantity}") from None


def parse_budget(quantity: str, value: object, tolerance: float) -> Constraint | None:
    """A constraint from `74.7M` (target), `4G..6G`, `..6G`, `4G..`, a number or a (lo, hi) pair."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and ".." in value:
        low_text, _, high_text = value.partition("..")
        if ".." in high_text or not (low_text.strip() or high_text.strip()):
            raise DesignError(f"write a range as 4G..6G, ..6G or 4G.., got {value!r}", field=f"--{quantity}")
        value = (low_text.strip() or None, high_text.strip() or None)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise DesignError("a range is a (min, max) pair", field=f"--{quantity}")
        lo = 0.0 if value[0] is None else _quantity(value[0], quantity)
        hi = math.inf if value[1] is None else _quantity(value[1], quantity)
        if lo > hi:
            raise DesignError(f"range minimum {format_quantity(lo)} is above its maximum {format_quantity(hi)}",
                              field=f"--{quantity}")
        if hi == 0:
            raise DesignError("a range up to 0 admits no network", field=f"--{quantity}")
        return Constraint(quantity, lo, hi)
    target = _quantity(value, quantity)
    if target <= 0:
        raise DesignError("a target must be above 0", field=f"--{quantity}")
    return Constraint(quantity, target * (1 - tolerance), target * (1 + tolerance), target, tolerance)


def resolution_choices(spec: CMTSpec, value: int | str | Sequence[int] | None) -> list[int]:
    """Legal input sizes to search: one given size, those in a range `224..320`, or 0.5x-2x the base's."""
    step = resolution_step(spec)
    if value is None:
        low, high = spec.resolution / 2, spec.resolution * 2
    elif isinstance(value, int) and not isinstance(value, bool):
        return [check_resolution(spec, value)]
    elif isinstance(value, str) and ".." not in value:
        try:
            size = int(value)
        except ValueError:
            raise DesignError(f"a resolution is a number of pixels or a range 224..320, got {value!r}",
                              field="resolution") from None
        return [check_resolution(spec, size)]
    else:
        if isinstance(value, str):
            parts = value.split("..")
            try:
                low, high = (float(p) if p.strip() else None for p in parts) if len(parts) == 2 else (None, None)
            except ValueError:
                low = high = None
            if low is None or high is None:
                raise DesignError(f"write a resolution range as 224..320, got {value!r}", field="resolution")
        else:
            low, high = value
        if low > high:
            raise DesignError(f"resolution range minimum {low:g} is above its maximum {high:g}", field="resolution")
    sizes = [r for r in range(step, int(high) + 1, step) if r >= low]
    if not sizes:
        raise DesignError(f"no legal resolution (multiple of {step}) lies in {low:g}..{high:g}", field="resolution")
    return sizes


# ---------------------------------------------------------------- exact cost, linear in depth

class CostModel:
    """`analytic_cost` split as fixed part + depth_i x block_i, from the same layer functions.

    Exact for square inputs at the spec's own resolution (tested against
    `analytic_cost`); parts are cached, so a design costs a few additions.
    """

    def __init__(self, base: CMTSpec):
        self.in_channels = base.in_channels
        self.fc_channels = base.head.fc_channels
        self.num_classes = base.num_classes
        self.heads = tuple(s.heads for s in base.stages)
        self.reductions = tuple(s.reduction for s in base.stages)
        self.options = (base.qkv_bias, base.block.lpu, base.block.reduction_kind.value,
                        base.block.position_bias.value)
        self._fixed: dict[tuple, tuple[int, int]] = {}
        self._block: dict[tuple, tuple[int, int]] = {}

    def _stage(self, i: int, resolution: int, c_in: int, dim: int, hidden: int, depth: int) -> Cx:
        side = resolution // 2 ** (i + 1)
        cx = Cx(side, side)
        return cmt_stage_cost(cx, c_in, dim, depth, self.heads[i], self.reductions[i], hidden, *self.options)

    def fixed(self, resolution: int, stem: int, channels: tuple[int, ...]) -> tuple[int, int]:
        """Stem, patch aggregations, per-stage position biases and head: what depth does not scale."""
        key = (resolution, stem, channels)
        known = self._fixed.get(key)
        if known is None:
            cx = stem_cost(Cx(resolution, resolution), self.in_channels, stem)
            params, macs = cx.params, cx.macs
            c_in = stem
            for i, dim in enumerate(channels):
                part = self._stage(i, resolution, c_in, dim, 1, 0)
                params, macs, c_in = params + part.params, macs + part.macs, dim
            side = resolution // 2 ** (len(channels) + 1)
            head = classifier_head_cost(Cx(side, side), c_in, self.fc_channels, self.num_classes)
            known = self._fixed[key] = (params + head.params, macs + head.macs)
        return known

    def block(self, i: int, resolution: int, dim: int, hidden: int) -> tuple[int, int]:
        """One CMT block of stage i (with its own position bias when biases are per block)."""
        key = (i, resolution, dim, hidden)
        known = self._block.get(key)
        if known is None:
            one = self._stage(i, resolution, dim, dim, hidden, 1)
            none = self._stage(i, resolution, dim, dim, hidden, 0)
            known = self._block[key] = (one.params - none.params, one.macs - none.macs)
        return known

    def cost(self, shape: Shape) -> tuple[int, int]:
        params, macs = self.fixed(shape.resolution, shape.stem, shape.channels)
        for i, (dim, hidden, depth) in enumerate(zip(shape.channels, shape.hiddens(), shape.depths, strict=True)):
            p, m = self.block(i, shape.resolution, dim, hidden)
            params, macs = params + depth * p, macs + depth * m
        return params, macs


# ---------------------------------------------------------------- the design space

@dataclass
class Space:
    """Values the search tries around a base spec."""

    resolutions: list[int]
    widths: list[tuple[int, tuple[int, ...]]]
    expansions: list[float]
    patterns: list[tuple[int, ...]]  # depths of the stages other than `main`
    main: int  # the deepest stage, whose depth is solved for
    max_depths: tuple[int, ...]


def _geometric(low: float, high: float, ratio: float) -> list[float]:
    count = max(1, int(math.ceil(math.log(high / low) / math.log(ratio))))
    return [low * (high / low) ** (k / count) for k in range(count + 1)]


def check_multiplier_range(value: Sequence[float], field: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not (0 < low <= high and math.isfinite(high)):
        raise DesignError(f"a range of multipliers needs 0 < min <= max, got {low:g}..{high:g}", field=field)
    return low, high


def build_space(base: CMTSpec, resolutions: list[int], divisor: int, width_range: Sequence[float],
                depth_range: Sequence[float], expansion_range: Sequence[float]) -> Space:
    w_lo, w_hi = check_multiplier_range(width_range, "width_range")
    d_lo, d_hi = check_multiplier_range(depth_range, "depth_range")
    e_lo, e_hi = check_multiplier_range(expansion_range, "expansion_range")
    widths = {scaled_widths(base, m, divisor) for m in _geometric(w_lo, w_hi, 1.03)}
    if w_lo <= 1 <= w_hi:
        widths.add(scaled_widths(base, 1.0, divisor))
    expansions = {k / 4 for k in range(math.ceil(e_lo * 4), math.floor(e_hi * 4) + 1)}
    if e_lo <= base.stages[0].expansion <= e_hi:
        expansions.add(base.stages[0].expansion)
    if not expansions:
        raise DesignError(f"no expansion ratio in {e_lo:g}..{e_hi:g} on the 0.25 grid", field="expansion_range")
    depths = [s.depth for s in base.stages]
    main = depths.index(max(depths))
    max_depths = tuple(max(1, round_depth(d * d_hi)) for d in depths)
    patterns = {tuple(min(max_depths[i], round_depth(d * m)) for i, d in enumerate(depths) if i != main)
                for m in _geometric(d_lo, d_hi, 1.05)}
    ordered = sorted(widths, key=lambda w: (w[1], w[0]))
    return Space(sorted(resolutions), ordered, sorted(expansions), sorted(patterns), main, max_depths)


# ---------------------------------------------------------------- results

@dataclass
class Design:
    """One candidate: its spec (validated), exact cost, budget standing and rank score."""

    spec: CMTSpec
    params: int
    macs: int
    meets: bool
    score: float
    violation: float

    def delta(self, constraint: Constraint | None) -> str:
        if constraint is None:
            return "-"
        return constraint.delta(self.params if constraint.quantity == "params" else self.macs)


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

    @property
    def best(self) -> Design | None:
        return self.designs[0] if self.feasible and self.designs else None

    @property
    def constraints(self) -> list[Constraint]:
        return [c for c in (self.params, self.macs) if c is not None]


# ---------------------------------------------------------------- search

@dataclass(frozen=True)
class _Frame:
    """A resolution, width and expansion with what they fix; depths are chosen within it."""

    resolution: int
    stem: int
    channels: tuple[int, ...]
    expansions: tuple[float, ...]
    params: int  # cost of everything but the blocks
    macs: int
    blocks: tuple[tuple[int, int], ...]  # (params, MACs) of one block per stage
    width_log: float  # log multipliers against the base, for the penalty
    res_log: float
    expansion_term: float


class _Search:
    """Enumerates the space with the linear cost model and keeps the best and nearest designs."""

    KEEP = 64

    def __init__(self, base: CMTSpec, space: Space, params: Constraint | None, macs: Constraint | None):
        self.base, self.space = base, space
        self.model = CostModel(base)
        self.p_lo, self.p_hi = (params.lo, params.hi) if params else (0.0, math.inf)
        self.m_lo, self.m_hi = (macs.lo, macs.hi) if macs else (0.0, math.inf)
        self.params, self.macs = params, macs
        self.log_base_depths = [math.log(s.depth) for s in base.stages]
        self.log_c0 = math.log(base.stages[0].channels)
        self.log_res = math.log(base.resolution)
        self.log_e = math.log(base.stages[0].expansion)
        self.e_ratios = [s.expansion / base.stages[0].expansion for s in base.stages]
        self.best: list[tuple[float, int, Shape, int, int]] = []  # max-heap by score (negated)
        self.nearest: list[tuple[float, int, Shape, int, int]] = []
        self.seen: set[Shape] = set()
        self.evaluated = 0
        self.counter = 0
        self.extremes = [math.inf, 0.0, math.inf, 0.0, math.inf, 0.0]  # params, macs, macs/param

    def expansions(self, e: float) -> tuple[float, ...]:
        return tuple(e if r == 1.0 else round(e * r, 4) for r in self.e_ratios)

    def frame(self, resolution: int, stem: int, channels: tuple[int, ...], expansions: tuple[float, ...]) -> _Frame:
        """Everything a resolution, width and expansion fix: costs without depth, per-block costs, log terms."""
        hiddens = tuple(int(c * e) for c, e in zip(channels, expansions, strict=True))
        params, macs = self.model.fixed(resolution, stem, channels)
        blocks = tuple(self.model.block(i, resolution, c, h) for i, (c, h) in enumerate(zip(channels, hiddens,
                                                                                               strict=True)))
        return _Frame(resolution, stem, channels, expansions, params, macs, blocks,
                      math.log(channels[0]) - self.log_c0, math.log(resolution) - self.log_res,
                      abs(math.log(expansions[0]) - self.log_e))

    def penalty(self, shape: Shape, params: int, macs: int) -> float:
        frame = self.frame(shape.resolution, shape.stem, shape.channels, shape.expansions)
        return self._penalty(frame, shape.depths, params, macs)

    def _penalty(self, frame: _Frame, depths: Sequence[int], params: int, macs: int) -> float:
        logs = [math.log(d) - b for d, b in zip(depths, self.log_base_depths, strict=True)]
        n = len(logs)
        depth = sum(logs) / n
        profile = sum(abs(x - depth) for x in logs) / n
        w, r = frame.width_log, frame.res_log
        mean = (w + depth + r) / 3
        balance = math.sqrt(((w - mean) ** 2 + (depth - mean) ** 2 + (r - mean) ** 2) / 3)
        fit = 0.0
        if self.params is not None:
            fit += self.params.fit(params)
        if self.macs is not None:
            fit += self.macs.fit(macs)
        return profile + balance + frame.expansion_term + fit

    def violation(self, params: int, macs: int) -> float:
        return sum(c.violation(v) for c, v in ((self.params, params), (self.macs, macs)) if c is not None)

    def _keep(self, heap: list, rank: float, shape: Shape, params: int, macs: int) -> None:
        self.counter += 1
        item = (-rank, self.counter, shape, params, macs)
        if len(heap) < self.KEEP:
            heapq.heappush(heap, item)
        elif -rank > heap[0][0]:
            heapq.heapreplace(heap, item)

    def consider(self, frame: _Frame, depths: tuple[int, ...], params: int, macs: int) -> None:
        self.evaluated += 1
        shape = Shape(frame.resolution, frame.stem, frame.channels, depths, frame.expansions)
        if shape in self.seen:
            return
        self.seen.add(shape)
        if self.p_lo <= params <= self.p_hi and self.m_lo <= macs <= self.m_hi:
            self._keep(self.best, self._penalty(frame, depths, params, macs), shape, params, macs)
        elif not self.best:
            rank = self.violation(params, macs) * 100 + self._penalty(frame, depths, params, macs)
            self._keep(self.nearest, rank, shape, params, macs)

    def solve(self, frame: _Frame, others: tuple[int, ...]) -> bool:
        """Try the deepest stage's depths that meet the budget, given every other choice.

        Returns False when even a single block in the deepest stage is over a
        maximum, so the caller can skip deeper patterns.
        """
        main = self.space.main
        depths = list(others)
        depths.insert(main, 0)
        p0, m0 = frame.params, frame.macs
        for d, (p, m) in zip(depths, frame.blocks, strict=True):
            p0, m0 = p0 + d * p, m0 + d * m
        pj, mj = frame.blocks[main]
        if p0 + pj > self.p_hi or m0 + mj > self.m_hi:
            if not self.best:
                depths[main] = 1
                self.consider(frame, tuple(depths), p0 + pj, m0 + mj)
            return False
        top = self.space.max_depths[main]
        low = max(1, math.ceil((self.p_lo - p0) / pj), math.ceil((self.m_lo - m0) / mj))
        high = min(top, math.floor((self.p_hi - p0) / pj) if self.p_hi < math.inf else top,
                   math.floor((self.m_hi - m0) / mj) if self.m_hi < math.inf else top)
        if low <= high:
            if high - low <= 3:
                picks = range(low, high + 1)
            else:
                logs = [math.log(d) - self.log_base_depths[i] for i, d in enumerate(depths) if i != main]
                ratio = math.exp(sum(logs) / len(logs)) if logs else 1.0
                proportional = round_depth(self.base.stages[main].depth * ratio)
                picks = {low, high, min(high, max(low, proportional))}
        elif self.best:
            return True
        else:
            picks = {min(top, max(1, low if low > top else high))}
        for d in picks:
            depths[main] = d
            self.consider(frame, tuple(depths), p0 + d * pj, m0 + d * mj)
        return True

    def _extremes(self, p_min: int, m_min: int, p_max: int, m_max: int) -> None:
        x = self.extremes
        x[0], x[1] = min(x[0], p_min), max(x[1], p_max)
        x[2], x[3] = min(x[2], m_min), max(x[3], m_max)
        for p, m in ((p_min, m_min), (p_max, m_max)):
            x[4], x[5] = min(x[4], m / p), max(x[5], m / p)

    def reach(self) -> None:
        """Smallest and largest designs of the space, before searching it."""
        for resolution in self.space.resolutions:
            self._corners(resolution)

    def coarse(self) -> None:
        """Every resolution, width and expansion, with the other stages' depths on the base pattern.

        Costs grow with width, expansion and depth, so a choice that is over a
        maximum ends its loop; a choice whose penalty cannot beat the designs
        kept so far is skipped (the penalty's expansion and balance terms are
        known before the depths are).
        """
        space = self.space
        for resolution in space.resolutions:
            log_res = math.log(resolution) - self.log_res
            for stem, channels in space.widths:
                # Best possible balance with the depth multiplier free: |w - r| / sqrt(6).
                floor = abs(math.log(channels[0]) - self.log_c0 - log_res) / math.sqrt(6)
                if self._hopeless(floor):
                    continue
                width_fits = False
                for e in space.expansions:
                    expansions = self.expansions(e)
                    if self._hopeless(floor + abs(math.log(expansions[0]) - self.log_e)):
                        if e > self.base.stages[0].expansion:
                            width_fits = True
                            break
                        continue
                    frame = self.frame(resolution, stem, channels, expansions)
                    fits = False
                    for others in space.patterns:
                        if not self.solve(frame, others):
                            break  # deeper patterns only cost more
                        fits = True
                    if not fits:
                        break  # larger expansions only cost more
                    width_fits = True
                if not width_fits:
                    break  # wider designs only cost more

    def _hopeless(self, floor: float) -> bool:
        """Whether a lower bound on the penalty already loses to every design kept."""
        return len(self.best) >= self.KEEP and floor >= -self.best[0][0]

    def _corners(self, resolution: int) -> None:
        """Smallest and largest designs at this resolution, for the reach of the space."""
        space = self.space
        for stem, channels in (space.widths[0], space.widths[-1]):
            for e in (space.expansions[0], space.expansions[-1]):
                for others in (space.patterns[0], space.patterns[-1]):
                    for d in (1, space.max_depths[space.main]):
                        depths = list(others)
                        depths.insert(space.main, d)
                        shape = Shape(resolution, stem, channels, tuple(depths), self.expansions(e))
                        params, macs = self.model.cost(shape)
                        self._extremes(params, macs, params, macs)

    def refine(self, rounds: int = 2) -> None:
        """Move the best designs one step along every axis; the deepest stage is solved again."""
        space = self.space
        widths = space.widths
        width_index = {w: k for k, w in enumerate(widths)}
        for _ in range(rounds):
            heap = self.best or self.nearest
            seeds = [item[2] for item in sorted(heap, reverse=True)[:16]]
            for shape in seeds:
                k = width_index.get((shape.stem, shape.channels))
                nearby = [widths[j] for j in (k - 1, k, k + 1) if k is not None and 0 <= j < len(widths)]
                e0 = shape.expansions[0] / self.e_ratios[0]
                others = [d for i, d in enumerate(shape.depths) if i != space.main]
                limits = [m for i, m in enumerate(space.max_depths) if i != space.main]
                for stem, channels in nearby or [(shape.stem, shape.channels)]:
                    for e in (e0 - 0.125, e0, e0 + 0.125):
                        if not space.expansions[0] <= e <= space.expansions[-1]:
                            continue
                        frame = self.frame(shape.resolution, stem, channels, self.expansions(e))
                        for moved in _neighbours(others, limits):
                            self.solve(frame, moved)

    def ranked(self, heap: list) -> list[tuple[Shape, int, int, float]]:
        return [(shape, p, m, -neg) for neg, _, shape, p, m in sorted(heap, reverse=True)]


def _neighbours(depths: list[int], limits: list[int]) -> Iterable[tuple[int, ...]]:
    """Every combination of moving each depth by -1, 0 or +1 within 1..limit."""
    options = [[d + s for s in (-1, 0, 1) if 1 <= d + s <= limit] for d, limit in zip(depths, limits, strict=True)]
    combos: list[tuple[int, ...]] = [()]
    for choice in options:
        combos = [(*c, d) for c in combos for d in choice]
    return combos


def nearest_bundled(params: Constraint | None, macs: Constraint | None) -> tuple[CMTSpec, str]:
    """The bundled spec whose cost is closest (in log terms) to the budget: the default base."""
    from cmt_gen.complexity import analytic_cost
    from cmt_gen.spec_io import bundled_names, load_spec

    def aim(c: Constraint) -> float:
        if c.target is not None:
            return c.target
        return c.hi if c.lo <= 0 else (c.lo if math.isinf(c.hi) else math.sqrt(c.lo * c.hi))

    best: tuple[float, str] | None = None
    for name in bundled_names():
        cost = analytic_cost(load_spec(name))
        gap = sum(abs(math.log(max(v, 1.0) / max(aim(c), 1.0))) for c, v in ((params, cost.params),
                  (macs, cost.macs)) if c is not None)
        if best is None or gap < best[0]:
            best = (gap, name)
    if best is None:
        raise DesignError("no bundled spec to start from; give --from", field="from")
    return load_spec(best[1]), best[1]


def design_specs(
    base: CMTSpec | str | Path | Mapping | None = None,
    *,
    params: object = None,
    macs: object = None,
    resolution: int | str | Sequence[int] | None = None,
    top: int = 5,
    tolerance: str | float | Sequence[float] | None = None,
    divisor: int = DEFAULT_DIVISOR,
    name: str | None = None,
    width_range: Sequence[float] = (0.25, 4.0),
    depth_range: Sequence[float] = (0.25, 4.0),
    expansion_range: Sequence[float] = (2.0, 6.0),
) -> DesignResult:
    """Search specs around `base` for a params/MACs budget; ranked, validated designs.

    `params` and `macs` take a target (`'74.7M'`, 74.7e6), a range
    (`'4G..6G'`, `(4e9, 6e9)`) or None. Raises `DesignError` for a budget no
    design in the space can approach (impossible or contradictory); when the
    budget is plausible but unmet, the result has `feasible=False` and the
    nearest designs.
    """
    start = time.perf_counter()
    p_tol, m_tol = parse_tolerance(tolerance)
    params_c = parse_budget("params", params, p_tol)
    macs_c = parse_budget("macs", macs, m_tol)
    if params_c is None and macs_c is None:
        raise DesignError("give a budget: params, MACs or both (a target such as 20M or a range such as 4G..6G)",
                          field="budget")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 64:
        raise DesignError(f"top is a whole number from 1 to 64, got {top!r}", field="top")
    spec, label = nearest_bundled(params_c, macs_c) if base is None else resolve_base(base)
    divisor = check_divisor(divisor)
    space = build_space(spec, resolution_choices(spec, resolution), divisor, width_range, depth_range,
                        expansion_range)
    search = _Search(spec, space, params_c, macs_c)
    search.reach()
    x = search.extremes
    bounds = {"params": (x[0], x[1]), "macs": (x[2], x[3]), "macs_per_param": (x[4], x[5])}
    _refuse_impossible(spec, label, params_c, macs_c, bounds)
    search.coarse()
    search.refine()
    feasible = bool(search.best)
    ranked = search.ranked(search.best if feasible else search.nearest)[:top]
    designs = [_realise(spec, label, shape, params_c, macs_c, search, rank, name, divisor)
               for rank, (shape, _, _, _) in enumerate(ranked, 1)]
    return DesignResult(spec, label, params_c, macs_c, designs, feasible, search.evaluated,
                        time.perf_counter() - start, space, bounds)


def _refuse_impossible(spec: CMTSpec, label: str, params: Constraint | None, macs: Constraint | None,
                       bounds: dict[str, tuple[float, float]]) -> None:
    """Raise for a budget outside everything the space can reach: a user error, not a near miss.

    Params and MACs bounds are exact (the space's smallest and largest
    corners); the MACs-per-parameter range comes from corners only, so it
    is given a factor of 2 of slack before a budget is called contradictory.
    """
    reach = f"designs around {label} (widths x0.25-4, depths x0.25-4, expansion 2-6)"
    for c in (params, macs):
        if c is None:
            continue
        low, high = bounds[c.quantity]
        if c.hi < low or c.lo > high:  # exact: cost grows along every axis of the space
            raise DesignError(
                f"no CMT can meet {c.label} {c.describe()}: {reach} span {format_quantity(low)}.."
                f"{format_quantity(high)}", field=f"--{c.quantity}")
    if params is not None and macs is not None:
        low, high = bounds["macs_per_param"]
        want_low = macs.lo / params.hi
        want_high = macs.hi / params.lo if params.lo > 0 else math.inf
        if want_high < low * 0.5 or want_low > high * 2:
            raise DesignError(
                f"contradictory budget: params {params.describe()} with MACs {macs.describe()} asks for "
                f"{want_low:,.0f}..{want_high:,.0f} MACs per parameter; {reach} have {low:,.0f}..{high:,.0f}",
                field="budget")


def _realise(base: CMTSpec, label: str, shape: Shape, params: Constraint | None, macs: Constraint | None,
             search: _Search, rank: int, name: str | None, divisor: int) -> Design:
    """Turn a shape into a validated spec and recount it with `analytic_cost`."""
    from cmt_gen.complexity import analytic_cost

    score = search.penalty(shape, *search.model.cost(shape))
    budget = ", ".join(f"{c.label} {c.describe()}" for c in (params, macs) if c is not None)
    width = shape.channels[0] / base.stages[0].channels
    summary = (f"designed by cmt-gen design from {label} for {budget} (rank {rank}, score {score:.3f}): "
               f"width x{width:.3f}, depths {list(shape.depths)}, expansion {shape.expansions[0]:g}, "
               f"{shape.resolution} px; channels rounded to multiples of lcm(heads, {divisor})")
    spec = derive_spec(base, shape, name=name or f"{base.name}_design",
                       description=f"Designed by cmt-gen from {base.name} for {budget}.",
                       provenance=[summary, *Shape.of(base).changes(shape)], budget=upper_limits(params, macs))
    cost = analytic_cost(spec)
    expected = search.model.cost(shape)
    if (cost.params, cost.macs) != expected:
        raise RuntimeError(f"cost model {expected} disagrees with analytic_cost {(cost.params, cost.macs)}")
    meets = all(c.meets(v) for c, v in ((params, cost.params), (macs, cost.macs)) if c is not None)
    return Design(spec, cost.params, cost.macs, meets, score, search.violation(cost.params, cost.macs))
