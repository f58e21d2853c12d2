"""Budgets for the design tools: targets with a tolerance, ranges, and legal resolutions.

Each of params and MACs may be omitted, a range (`4G..6G`, `..6G`, `4G..`) or a
single value, which means a target within a tolerance: 1% for params and 2% for
MACs by default (`--tolerance 0.5%` for both, or `1%,3%`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cmt_gen.design.scaling import (
    DesignError,
    check_resolution,
    resolution_step,
)
from cmt_gen.spec.quantity import format_in_unit, parse_quantity, quantity_text
from cmt_gen.spec.schema import MAX_RESOLUTION, CMTSpec

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

    def show(self, value: float, exact: bool = False) -> str:
        return show_value(value, self.quantity, exact)

    def describe(self) -> str:
        """The budget in its quantity's unit (params in M, MACs in G), e.g. '74.7M within 1%', '..6G'."""
        if self.target is not None:
            return f"{self.show(self.target, exact=True)} within {self.tolerance * 100:g}%"
        low = self.show(self.lo) if self.lo > 0 else ""
        high = "" if math.isinf(self.hi) else self.show(self.hi)
        return f"{low}..{high}"


def budget_record(*constraints: Constraint | None) -> dict[str, dict[str, str]]:
    """A budget as the user gave it, for a spec's `budget:` (`cmt-gen check` checks against it).

    A target keeps its tolerance (`{target: 74.7M, tolerance: 1%}`), a range its
    ends (`{min: 4G, max: 6G}`); figures are text in M (params) or G (MACs).
    """
    record: dict[str, dict[str, str]] = {}
    for c in constraints:
        if c is None or c.quantity not in ("params", "macs"):  # speed holds for one calibration, not the spec
            continue
        if c.target is not None:
            record[c.quantity] = {"target": quantity_text(c.target, c.quantity),
                                  "tolerance": f"{c.tolerance * 100:g}%"}
            continue
        limits = {}
        if c.lo > 0:
            limits["min"] = quantity_text(c.lo, c.quantity)
        if math.isfinite(c.hi):
            limits["max"] = quantity_text(c.hi, c.quantity)
        if limits:
            record[c.quantity] = limits
    return record


def parse_tolerance(value: str | float | Sequence[float] | None) -> tuple[float, float]:
    """`1%` (both), `1%,2%` (params, MACs), 0.01 or (0.01, 0.02) -> (params, MACs) fractions."""
    if value is None:
        return DEFAULT_TOLERANCE
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (1, 2, 3) or not all(parts):
            raise DesignError(f"write a tolerance as 1% or 1%,2% (params, MACs) or 1%,2%,5% (params, MACs, speed), "
                              f"got {value!r}", field="tolerance")
        parts = parts[:2]  # a third value is the speed tolerance (`parse_speed_tolerance`)
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


def show_value(value: float, quantity: str, exact: bool = False) -> str:
    """A value in its quantity's unit: 26.26M, 6.00G, 40 img/s, 25 ms (latency is held in seconds)."""
    if quantity == "latency":
        return f"{value * 1000:.4g} ms"
    if quantity == "throughput":
        return f"{value:.4g} img/s"
    return quantity_text(value, quantity) if exact else format_in_unit(value, quantity)


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
            raise DesignError(f"range minimum {show_value(lo, quantity)} is above its maximum "
                              f"{show_value(hi, quantity)}",
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
        if not (math.isfinite(low) and math.isfinite(high)) or high > MAX_RESOLUTION:
            raise DesignError(f"a resolution range lies within 1..{MAX_RESOLUTION} px, got {low:g}..{high:g}",
                              field="resolution")
    sizes = [r for r in range(step, int(high) + 1, step) if r >= low]
    if not sizes:
        raise DesignError(f"no legal resolution (multiple of {step}) lies in {low:g}..{high:g}", field="resolution")
    return sizes

