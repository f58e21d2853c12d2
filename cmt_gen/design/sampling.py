"""Random legal specs from a design space around a base, for studies of the space.

The samplers follow pycls's design-space sampling: a value drawn uniformly
or log-uniformly from a range, then quantised. Per sample:

- width multiplier: log-uniform in `width_range` (default 0.5-2), then rounded
  as `cmt_gen.design.scaling` rounds channels;
- each stage's depth: log-uniform in the base depth times `depth_range`
  (default 0.5-2), rounded to an integer >= 1;
- expansion ratio (all stages): uniform in `expansion_range` (default 2-6),
  quantised to 0.25;
- resolution: the base's, a given size, or uniform over the legal sizes of a
  range.

A draw that misses the budget, or repeats an earlier sample, is rejected; the
sequence depends only on the seed. Costs are `analytic_cost`'s.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cmt_gen.design.constraints import Constraint, budget_record, parse_budget, parse_tolerance, resolution_choices
from cmt_gen.design.cost_model import CostModel, check_multiplier_range
from cmt_gen.design.reach import nearest_bundled
from cmt_gen.design.scaling import (
    DEFAULT_DIVISOR,
    DesignError,
    Shape,
    check_divisor,
    derive_spec,
    resolve_base,
    scaled_widths,
)
from cmt_gen.spec.quantity import format_in_unit
from cmt_gen.spec.schema import CMTSpec

MAX_SAMPLES = 10_000  # about 30 s of validated specs; a larger study is several seeds
STALL_TRIES = 20_000  # draws in a row without a new sample: the space (or the budget within it) is exhausted


def uniform(rng: random.Random, low: float, high: float, quantum: float | None = None) -> float:
    """Uniform in [low, high], optionally rounded to a multiple of `quantum` inside the range."""
    value = rng.uniform(low, high)
    return value if quantum is None else _quantise(value, low, high, quantum)


def log_uniform(rng: random.Random, low: float, high: float, quantum: float | None = None) -> float:
    """Log-uniform in [low, high]: as likely to halve as to double; optionally quantised."""
    value = math.exp(rng.uniform(math.log(low), math.log(high)))
    return value if quantum is None else _quantise(value, low, high, quantum)


def _quantise(value: float, low: float, high: float, quantum: float) -> float:
    q = round(value / quantum) * quantum
    lowest, highest = math.ceil(low / quantum - 1e-9) * quantum, math.floor(high / quantum + 1e-9) * quantum
    return min(max(q, lowest), highest) if lowest <= highest else q


@dataclass
class Sample:
    """One sampled spec, its exact cost and the draws that made it."""

    index: int
    spec: CMTSpec
    params: int
    macs: int
    activations: int
    width: float
    depths: tuple[int, ...]
    expansion: float
    speed: dict | None = None  # predicted latency_ms, images_per_s and batch_size, given a calibration

    def record(self) -> dict:
        from cmt_gen.spec.serialize import spec_to_dict

        return {"index": self.index, "name": self.spec.name, "params": self.params, "macs": self.macs,
                "activations": self.activations, "resolution": self.spec.resolution,
                "width_multiplier": round(self.width, 4), "depths": list(self.depths), "expansion": self.expansion,
                **(self.speed or {}), "spec": spec_to_dict(self.spec)}


@dataclass
class SampleResult:
    samples: list[Sample]
    requested: int
    tries: int
    base_label: str
    constraints: list[Constraint]

    @property
    def complete(self) -> bool:
        return len(self.samples) == self.requested

    def jsonl(self) -> str:
        return "".join(json.dumps(s.record(), sort_keys=False) + "\n" for s in self.samples)


def sample_specs(
    base: CMTSpec | str | Path | Mapping | None = None,
    n: int = 10,
    *,
    seed: int = 0,
    params: object = None,
    macs: object = None,
    resolution: int | str | Sequence[int] | None = None,
    tolerance: str | float | Sequence[float] | None = None,
    width_range: Sequence[float] = (0.5, 2.0),
    depth_range: Sequence[float] = (0.5, 2.0),
    expansion_range: Sequence[float] = (2.0, 6.0),
    divisor: int = DEFAULT_DIVISOR,
    max_tries: int | None = None,
    calibration=None,
) -> SampleResult:
    """Draw `n` distinct legal specs meeting the budget; deterministic for a seed.

    The base defaults to the bundled spec nearest the budget (CMT-S without one).

    Stops after `max_tries` draws (default 1000 per sample, at least 20,000), or
    after STALL_TRIES draws in a row that add nothing (a small space holds fewer
    distinct specs than asked for); the result then holds fewer samples and
    `complete` is False. With a
    `calibration` (a `Calibration`, or a checked file: see
    `cmt_gen.design.speed.checked_calibration`) each sample carries its
    predicted speed.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise DesignError(f"the number of samples is a whole number from 1 to {MAX_SAMPLES}, got {n!r}", field="n")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DesignError(f"a seed is a whole number, got {seed!r}", field="seed")
    divisor = check_divisor(divisor)
    p_tol, m_tol = parse_tolerance(tolerance)
    params_c, macs_c = parse_budget("params", params, p_tol), parse_budget("macs", macs, m_tol)
    constraints = [c for c in (params_c, macs_c) if c]
    if base is not None:
        spec, label = resolve_base(base)
    elif constraints:
        spec, label = nearest_bundled(params_c, macs_c)
    else:
        spec, label = resolve_base("cmt_s")
    sizes = [spec.resolution] if resolution is None else resolution_choices(spec, resolution)
    w_lo, w_hi = check_multiplier_range(width_range, "width_range")
    d_lo, d_hi = check_multiplier_range(depth_range, "depth_range")
    e_lo, e_hi = check_multiplier_range(expansion_range, "expansion_range")
    if math.floor(e_hi * 4) < math.ceil(e_lo * 4):
        raise DesignError(f"no expansion ratio in {e_lo:g}..{e_hi:g} on the 0.25 grid", field="expansion_range")
    model = CostModel(spec)
    _check_reach(spec, label, model, constraints, sizes, (w_lo, w_hi), (d_lo, d_hi), (e_lo, e_hi), divisor)
    rng = random.Random(seed)
    limit = max_tries if max_tries is not None else max(20_000, 1000 * n)
    seen: set[Shape] = set()
    samples: list[Sample] = []
    tries = last_new = 0
    while len(samples) < n and tries < limit and tries - last_new < STALL_TRIES:
        tries += 1
        width = log_uniform(rng, w_lo, w_hi)
        stem, channels = scaled_widths(spec, width, divisor)
        depths = tuple(max(1, round(log_uniform(rng, max(1.0, s.depth * d_lo), max(1.0, s.depth * d_hi))))
                       for s in spec.stages)
        expansion = uniform(rng, e_lo, e_hi, 0.25)
        size = sizes[rng.randrange(len(sizes))]
        shape = Shape(size, stem, channels, depths, tuple(expansion for _ in spec.stages))
        if shape in seen:
            continue
        p, m = model.cost(shape)
        if not all(c.meets(p if c.quantity == "params" else m) for c in constraints):
            continue
        seen.add(shape)
        last_new = tries
        samples.append(_realise(spec, label, shape, len(samples), seed, width, expansion, budget_record(*constraints)))
    if calibration is not None:
        from cmt_gen.design.speed import checked_calibration
        from cmt_gen.latency.predict import predict_latency

        calibration, _ = checked_calibration(calibration, force=True)
        for s in samples:
            p = predict_latency(s.spec, calibration)
            s.speed = {"latency_ms": p.latency_ms, "images_per_s": p.images_per_s, "batch_size": p.batch_size}
    return SampleResult(samples, n, tries, label, constraints)


def _check_reach(spec: CMTSpec, label: str, model: CostModel, constraints: list[Constraint], sizes: list[int],
                 widths: tuple[float, float], depths: tuple[float, float], expansions: tuple[float, float],
                 divisor: int) -> None:
    """Refuse a budget outside the smallest..largest spec of the space (cost grows along every axis)."""
    corners = []
    for size, w, d, e in ((sizes[0], widths[0], depths[0], expansions[0]),
                          (sizes[-1], widths[1], depths[1], expansions[1])):
        stem, channels = scaled_widths(spec, w, divisor)
        shape = Shape(size, stem, channels, tuple(max(1, round(max(1.0, s.depth * d))) for s in spec.stages),
                      tuple(_quantise(e, *expansions, 0.25) for _ in spec.stages))
        corners.append(model.cost(shape))
    for c in constraints:
        k = 0 if c.quantity == "params" else 1
        low, high = corners[0][k], corners[1][k]
        if c.hi < low or c.lo > high:
            raise DesignError(f"no spec sampled around {label} can meet {c.label} {c.describe()}: the space spans "
                              f"{format_in_unit(low, c.quantity)}..{format_in_unit(high, c.quantity)}",
                              field=f"--{c.quantity}")


def _realise(base: CMTSpec, label: str, shape: Shape, index: int, seed: int, width: float,
             expansion: float, budget: dict[str, dict[str, str]]) -> Sample:
    from cmt_gen.cost.analytic import analytic_cost

    effective = shape.channels[0] / base.stages[0].channels
    spec = derive_spec(
        base, shape, name=f"{base.name}_s{seed}_{index:04d}",
        description=f"Sampled by cmt-gen from {base.name} (seed {seed}, sample {index}).",
        provenance=[f"sampled by cmt-gen sample from {label}, seed {seed}, sample {index}: width x{effective:.3f}, "
                    f"depths {list(shape.depths)}, expansion {expansion:g}, {shape.resolution} px",
                    *Shape.of(base).changes(shape)],
        budget=budget,
    )
    cost = analytic_cost(spec)
    return Sample(index, spec, cost.params, cost.macs, cost.activations, effective, shape.depths, expansion)
