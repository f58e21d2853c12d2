"""Find CMT specs that meet a parameter, MAC and speed budget, with the exact analytic counter.
Budgets are parsed in `cmt_gen.design.constraints` (speed: `cmt_gen.design.speed`).

Design space around a base spec (default: the bundled spec nearest the
budget): width multipliers 0.25-4 (rounded as in `cmt_gen.design.scaling`), one
expansion ratio for all stages from 2 to 6 in steps of 0.25 plus the base's
own, legal resolutions from half to twice the base's unless one is given, and a
depth for every stage: the stages other than the deepest follow the base's
pattern times a multiplier, the deepest is solved for. Heads, reduction ratios,
head and block options stay as in the base.

How it searches. The cost of a spec is linear in its depths:
cost = fixed(resolution, widths) + sum_i depth_i * block_i(resolution, width_i,
hidden_i), where `fixed` and `block_i` come from the very functions
`analytic_cost` sums (`CostModel`); predicted latency too (`SpeedModel`). So for
every resolution, width and expansion the deepest stage's depth that meets the budgets is an interval
solved in closed form, and thousands of designs cost microseconds each. A
second pass moves each of the best designs' other depths by one, the
expansion by 0.125 and the width by one rounding step. Every design returned
is then built as a spec and recounted with `analytic_cost`.

Ranking, among designs that meet the budget (lower is better): how far the
design strays from the base's proportions (depth pattern, balance of the
width, depth and resolution multipliers as compound scaling prescribes,
expansion ratio), plus for a target half its relative miss in tolerances, and
for a range with a maximum twice the unused share of the range ("under 6G"
prefers designs close to 6G; "at least 4G" prefers those close to 4G). Every design's spec
records what it was designed for and how it sits against the family (`design.record`, `.family`).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cmt_gen.design.constraints import (
    Constraint,
    budget_record,
    parse_budget,
    parse_tolerance,
    resolution_choices,
)
from cmt_gen.design.cost_model import CostModel, Space, build_space, depth_neighbours
from cmt_gen.design.reach import nearest_bundled, refuse_impossible
from cmt_gen.design.record import designed_for, proportion_warning, with_record
from cmt_gen.design.results import Design, DesignResult
from cmt_gen.design.scaling import (
    DEFAULT_DIVISOR,
    DesignError,
    Shape,
    check_divisor,
    derive_spec,
    resolve_base,
    round_depth,
)
from cmt_gen.design.speed import (
    SpeedModel,
    checked_calibration,
    parse_speed_budget,
    parse_speed_tolerance,
    seconds_bounds,
    speed_value,
)
from cmt_gen.latency.calibration_file import Calibration
from cmt_gen.spec.schema import CMTSpec

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
    seconds: float = 0.0  # predicted batch latency of everything but the blocks (with a speed budget)
    block_seconds: tuple[float, ...] = ()


class _Search:
    """Enumerates the space with the linear cost model and keeps the best and nearest designs."""

    KEEP = 64

    def __init__(self, base: CMTSpec, space: Space, params: Constraint | None, macs: Constraint | None,
                 speed: Constraint | None = None, speed_model: SpeedModel | None = None):
        self.base, self.space = base, space
        self.model = CostModel(base)
        self.speed, self.speed_model = speed, speed_model
        self.batch = speed_model.batch if speed_model else 1
        self.l_lo, self.l_hi = seconds_bounds(speed, self.batch)
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
        self.extremes = [math.inf, 0.0, math.inf, 0.0, math.inf, 0.0, math.inf, 0.0]  # params, macs, macs/param, s

    def expansions(self, e: float) -> tuple[float, ...]:
        return tuple(e if r == 1.0 else round(e * r, 4) for r in self.e_ratios)

    def frame(self, resolution: int, stem: int, channels: tuple[int, ...], expansions: tuple[float, ...]) -> _Frame:
        """Everything a resolution, width and expansion fix: costs without depth, per-block costs, log terms."""
        hiddens = tuple(int(c * e) for c, e in zip(channels, expansions, strict=True))
        params, macs = self.model.fixed(resolution, stem, channels)
        blocks = tuple(self.model.block(i, resolution, c, h) for i, (c, h) in enumerate(zip(channels, hiddens,
                                                                                               strict=True)))
        seconds, block_seconds = 0.0, (0.0,) * len(channels)
        if self.speed_model is not None:
            seconds = self.speed_model.fixed(resolution, stem, channels)
            block_seconds = tuple(self.speed_model.block(i, resolution, c, h)
                                  for i, (c, h) in enumerate(zip(channels, hiddens, strict=True)))
        return _Frame(resolution, stem, channels, expansions, params, macs, blocks,
                      math.log(channels[0]) - self.log_c0, math.log(resolution) - self.log_res,
                      abs(math.log(expansions[0]) - self.log_e), seconds, block_seconds)

    def seconds(self, shape: Shape) -> float:
        return self.speed_model.cost(shape) if self.speed_model is not None else 0.0

    def penalty(self, shape: Shape, params: int, macs: int) -> float:
        frame = self.frame(shape.resolution, shape.stem, shape.channels, shape.expansions)
        return self._penalty(frame, shape.depths, params, macs, self.seconds(shape))

    def _penalty(self, frame: _Frame, depths: Sequence[int], params: int, macs: int, seconds: float = 0.0) -> float:
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
        if self.speed is not None:
            fit += self.speed.fit(speed_value(self.speed, seconds, self.batch))
        return profile + balance + frame.expansion_term + fit

    def violation(self, params: int, macs: int, seconds: float = 0.0) -> float:
        found = sum(c.violation(v) for c, v in ((self.params, params), (self.macs, macs)) if c is not None)
        if self.speed is not None:
            found += self.speed.violation(speed_value(self.speed, seconds, self.batch))
        return found

    def _keep(self, heap: list, rank: float, shape: Shape, params: int, macs: int) -> None:
        self.counter += 1
        item = (-rank, self.counter, shape, params, macs)
        if len(heap) < self.KEEP:
            heapq.heappush(heap, item)
        elif -rank > heap[0][0]:
            heapq.heapreplace(heap, item)

    def consider(self, frame: _Frame, depths: tuple[int, ...], params: int, macs: int, seconds: float) -> None:
        self.evaluated += 1
        shape = Shape(frame.resolution, frame.stem, frame.channels, depths, frame.expansions)
        if shape in self.seen:
            return
        self.seen.add(shape)
        if self.p_lo <= params <= self.p_hi and self.m_lo <= macs <= self.m_hi and self.l_lo <= seconds <= self.l_hi:
            self._keep(self.best, self._penalty(frame, depths, params, macs, seconds), shape, params, macs)
        elif not self.best:
            rank = self.violation(params, macs, seconds) * 100 + self._penalty(frame, depths, params, macs, seconds)
            self._keep(self.nearest, rank, shape, params, macs)

    def solve(self, frame: _Frame, others: tuple[int, ...]) -> bool:
        """Try the deepest stage's depths that meet the budget, given every other choice.

        Returns False when even a single block in the deepest stage is over a
        maximum, so the caller can skip deeper patterns.
        """
        main = self.space.main
        depths = list(others)
        depths.insert(main, 0)
        p0, m0, l0 = frame.params, frame.macs, frame.seconds
        for d, (p, m), s in zip(depths, frame.blocks, frame.block_seconds, strict=True):
            p0, m0, l0 = p0 + d * p, m0 + d * m, l0 + d * s
        pj, mj = frame.blocks[main]
        lj = frame.block_seconds[main]
        if p0 + pj > self.p_hi or m0 + mj > self.m_hi or l0 + lj > self.l_hi:
            if not self.best:
                depths[main] = 1
                self.consider(frame, tuple(depths), p0 + pj, m0 + mj, l0 + lj)
            return False
        top = self.space.max_depths[main]
        low = max(1, math.ceil((self.p_lo - p0) / pj), math.ceil((self.m_lo - m0) / mj),
                  math.ceil((self.l_lo - l0) / lj) if lj > 0 else 1)
        high = min(top, math.floor((self.p_hi - p0) / pj) if self.p_hi < math.inf else top,
                   math.floor((self.m_hi - m0) / mj) if self.m_hi < math.inf else top,
                   math.floor((self.l_hi - l0) / lj) if self.l_hi < math.inf and lj > 0 else top)
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
            self.consider(frame, tuple(depths), p0 + d * pj, m0 + d * mj, l0 + d * lj)
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
                        seconds = self.seconds(shape)
                        self.extremes[6] = min(self.extremes[6], seconds)
                        self.extremes[7] = max(self.extremes[7], seconds)

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
                        for moved in depth_neighbours(others, limits):
                            self.solve(frame, moved)

    def ranked(self, heap: list) -> list[tuple[Shape, int, int, float]]:
        return [(shape, p, m, -neg) for neg, _, shape, p, m in sorted(heap, reverse=True)]


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
    throughput: object = None,
    latency: object = None,
    calibration: Calibration | str | Path | None = None,
    force: bool = False,
) -> DesignResult:
    """Search specs around `base` for a params/MACs/speed budget; ranked, validated designs.

    `params` and `macs` take a target (`'74.7M'`, 74.7e6), a range
    (`'4G..6G'`, `(4e9, 6e9)`) or None; so do `throughput` (images/s) and
    `latency` (per batch: `'25ms'`, or seconds from Python), which need a
    `calibration` (file or `Calibration`) and are met by predicted speed.
    Raises `DesignError` for a budget no design in the space can approach
    (impossible or contradictory); when the budget is plausible but unmet,
    the result has `feasible=False` and the nearest designs.
    """
    start = time.perf_counter()
    p_tol, m_tol = parse_tolerance(tolerance)
    params_c = parse_budget("params", params, p_tol)
    macs_c = parse_budget("macs", macs, m_tol)
    source = None if calibration is None or isinstance(calibration, Calibration) else calibration
    calibration, warnings = checked_calibration(calibration, force)
    speed_c = parse_speed_budget(throughput, latency, parse_speed_tolerance(tolerance), calibration)
    if params_c is None and macs_c is None and speed_c is None:
        raise DesignError("give a budget: params, MACs or both (a target such as 20M or a range such as 4G..6G)",
                          field="budget")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 64:
        raise DesignError(f"top is a whole number from 1 to 64, got {top!r}", field="top")
    spec, label = nearest_bundled(params_c, macs_c, speed_c, calibration) if base is None else resolve_base(base)
    divisor = check_divisor(divisor)
    space = build_space(spec, resolution_choices(spec, resolution), divisor, width_range, depth_range,
                        expansion_range)
    speed_model = SpeedModel(spec, calibration) if calibration is not None else None
    search = _Search(spec, space, params_c, macs_c, speed_c, speed_model)
    search.reach()
    x = search.extremes
    bounds = {"params": (x[0], x[1]), "macs": (x[2], x[3]), "macs_per_param": (x[4], x[5])}
    if speed_model is not None:
        bounds["seconds"] = (x[6], x[7])
    refuse_impossible(spec, label, params_c, macs_c, bounds, speed_c, search.batch)
    search.coarse()
    search.refine()
    feasible = bool(search.best)
    ranked = search.ranked(search.best if feasible else search.nearest)[:top]
    record = designed_for(params_c, macs_c, speed_c, resolution, space.resolutions, spec.resolution,
                          calibration, source, list(warnings))
    designs = [_realise(spec, label, shape, params_c, macs_c, search, rank, name, divisor, record)
               for rank, (shape, _, _, _) in enumerate(ranked, 1)]
    designs.sort(key=lambda d: d.score)  # stable: ties keep the search's order
    if feasible and designs[0].departures:
        warnings.append(proportion_warning(designs[0]))
    return DesignResult(spec, label, params_c, macs_c, designs, feasible, search.evaluated,
                        time.perf_counter() - start, space, bounds, speed=speed_c,
                        batch_size=search.batch if speed_model else None, warnings=warnings)


def _realise(base: CMTSpec, label: str, shape: Shape, params: Constraint | None, macs: Constraint | None,
             search: _Search, rank: int, name: str | None, divisor: int, record: Sequence[str] = ()) -> Design:
    """Turn a shape into a validated spec and recount it with `analytic_cost` (and `predict_latency`)."""
    from cmt_gen.cost.analytic import analytic_cost

    # The score the designs are ranked by: a near miss also pays 100x its relative distance from the budget,
    # so the "nearest designs" table reads in order of its own score column.
    params_macs = search.model.cost(shape)
    score = search.penalty(shape, *params_macs) + 100 * search.violation(*params_macs, search.seconds(shape))
    budget = ", ".join(f"{c.label} {c.describe()}" for c in (params, macs, search.speed) if c is not None)
    width = shape.channels[0] / base.stages[0].channels
    summary = (f"designed by cmt-gen design from {label} for {budget} (rank {rank}, score {score:.3f}): "
               f"width x{width:.3f}, depths {list(shape.depths)}, expansion {shape.expansions[0]:g}, "
               f"{shape.resolution} px; channels rounded to multiples of lcm(heads, {divisor})")
    spec = derive_spec(base, shape, name=name or f"{base.name}_design",
                       description=f"Designed by cmt-gen from {base.name} for {budget}.",
                       provenance=[summary, *Shape.of(base).changes(shape)], budget=budget_record(params, macs))
    cost = analytic_cost(spec)
    expected = search.model.cost(shape)
    if (cost.params, cost.macs) != expected:
        raise RuntimeError(f"cost model {expected} disagrees with analytic_cost {(cost.params, cost.macs)}")
    seconds = search.speed_model.predicted(spec) if search.speed_model is not None else None
    spec, found = with_record(spec, summary, record, seconds, search.batch, shape.depths, shape.channels,
                              cost.macs)
    meets = all(c.meets(v) for c, v in ((params, cost.params), (macs, cost.macs)) if c is not None)
    if search.speed is not None:
        meets = meets and search.speed.meets(speed_value(search.speed, seconds, search.batch))
    return Design(spec, cost.params, cost.macs, meets, score, search.violation(cost.params, cost.macs, seconds or 0.0),
                  seconds, found)
