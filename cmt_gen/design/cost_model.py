"""The exact analytic cost of a design, linear in its depths, and the design space around a base.

cost = fixed(resolution, widths) + sum_i depth_i * block_i(resolution, width_i,
hidden_i), where `fixed` and `block_i` come from the very functions
`analytic_cost` sums, so solving for a depth is closed-form and exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cmt_gen.cost.analytic import Cx, classifier_head_cost, cmt_stage_cost, stem_cost
from cmt_gen.design.scaling import (
    DesignError,
    Shape,
    round_depth,
    scaled_widths,
)
from cmt_gen.spec.schema import CMTSpec

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
        self.options = base.block
        self.qkv_bias = base.qkv_bias
        self._fixed: dict[tuple, tuple[int, int]] = {}
        self._block: dict[tuple, tuple[int, int]] = {}

    def _stage(self, i: int, resolution: int, c_in: int, dim: int, hidden: int, depth: int) -> Cx:
        side = resolution // 2 ** (i + 1)
        cx = Cx(side, side)
        return cmt_stage_cost(cx, c_in, dim, depth, self.heads[i], self.reductions[i], hidden, options=self.options,
                              qkv_bias=self.qkv_bias)

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


MAX_MULTIPLIER = 16.0  # a design space 16x wider, deeper or larger than its base is another network family


def check_multiplier_range(value: Sequence[float], field: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not (0 < low <= high and math.isfinite(high)):
        raise DesignError(f"a range of multipliers needs 0 < min <= max, got {low:g}..{high:g}", field=field)
    if high > MAX_MULTIPLIER or low < 1 / MAX_MULTIPLIER:
        raise DesignError(f"a range of multipliers lies within {1 / MAX_MULTIPLIER:g}..{MAX_MULTIPLIER:g}, got "
                          f"{low:g}..{high:g}", field=field)
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


def depth_neighbours(depths: list[int], limits: list[int]) -> Iterable[tuple[int, ...]]:
    """Every combination of moving each depth by -1, 0 or +1 within 1..limit."""
    options = [[d + s for s in (-1, 0, 1) if 1 <= d + s <= limit] for d, limit in zip(depths, limits, strict=True)]
    combos: list[tuple[int, ...]] = [()]
    for choice in options:
        combos = [(*c, d) for c in combos for d in choice]
    return combos
