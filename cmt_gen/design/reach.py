"""Where a design search starts and what it refuses: the nearest bundled base, impossible budgets."""

from __future__ import annotations

import math

from cmt_gen.design.constraints import Constraint
from cmt_gen.design.scaling import DesignError
from cmt_gen.spec.quantity import format_in_unit
from cmt_gen.spec.schema import CMTSpec


def nearest_bundled(params: Constraint | None, macs: Constraint | None, speed: Constraint | None = None,
                    calibration=None) -> tuple[CMTSpec, str]:
    """The bundled spec whose cost (and predicted speed) is closest, in log terms, to the budget."""
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.spec.bundled import bundled_names
    from cmt_gen.spec.loading import load_spec

    def aim(c: Constraint) -> float:
        if c.target is not None:
            return c.target
        return c.hi if c.lo <= 0 else (c.lo if math.isinf(c.hi) else math.sqrt(c.lo * c.hi))

    best: tuple[float, str] | None = None
    for name in bundled_names():
        spec = load_spec(name)
        cost = analytic_cost(spec)
        pairs = [(params, cost.params), (macs, cost.macs)]
        if speed is not None and calibration is not None:
            from cmt_gen.design.speed import speed_value
            from cmt_gen.latency.predict import predict_latency

            predicted = predict_latency(spec, calibration)
            pairs.append((speed, speed_value(speed, predicted.seconds, predicted.batch_size)))
        gap = sum(abs(math.log(max(v, 1e-9) / max(aim(c), 1e-9))) for c, v in pairs if c is not None)
        if best is None or gap < best[0]:
            best = (gap, name)
    if best is None:
        raise DesignError("no bundled spec to start from; give --from", field="from")
    return load_spec(best[1]), best[1]


def refuse_impossible(spec: CMTSpec, label: str, params: Constraint | None, macs: Constraint | None,
                      bounds: dict[str, tuple[float, float]], speed: Constraint | None = None,
                      batch: int = 1) -> None:
    """Raise for a budget outside everything the space can reach: a user error, not a near miss.

    Params and MACs bounds are exact (the space's smallest and largest
    corners); the MACs-per-parameter range comes from corners only, so it
    is given a factor of 2 of slack before a budget is called contradictory.
    Predicted speed also only falls along every axis, so its corners bound it.
    """
    from cmt_gen.design.speed import speed_value

    reach = f"designs around {label} (widths x0.25-4, depths x0.25-4, expansion 2-6)"
    for c in (params, macs):
        if c is None:
            continue
        low, high = bounds[c.quantity]
        if c.hi < low or c.lo > high:  # exact: cost grows along every axis of the space
            raise DesignError(
                f"no CMT can meet {c.label} {c.describe()}: {reach} span {format_in_unit(low, c.quantity)}.."
                f"{format_in_unit(high, c.quantity)}", field=f"--{c.quantity}")
    if speed is not None and "seconds" in bounds:
        low, high = bounds["seconds"]
        fastest, slowest = speed_value(speed, low, batch), speed_value(speed, high, batch)
        lo, hi = min(fastest, slowest), max(fastest, slowest)
        if speed.hi < lo or speed.lo > hi:
            raise DesignError(f"no CMT can meet {speed.label} {speed.describe()}: {reach} are predicted at "
                              f"{speed.show(lo)}..{speed.show(hi)} on this calibration", field=f"--{speed.quantity}")
    if params is not None and macs is not None:
        low, high = bounds["macs_per_param"]
        want_low = macs.lo / params.hi
        want_high = macs.hi / params.lo if params.lo > 0 else math.inf
        if want_high < low * 0.5 or want_low > high * 2:
            raise DesignError(
                f"contradictory budget: params {params.describe()} with MACs {macs.describe()} asks for "
                f"{want_low:,.0f}..{want_high:,.0f} MACs per parameter; {reach} have {low:,.0f}..{high:,.0f}",
                field="budget")


