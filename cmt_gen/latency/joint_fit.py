"""One fit for every kind of building block, from parts timed alone and whole networks timed as they run.

A part timed alone runs with its own weights and maps hot in the caches; inside a network the blocks
before it have evicted them, and the stage glue runs between blocks. A whole network is linear in the
same coefficients (seconds = sum over its parts of calls x coefficients . features), so both kinds of
timing can go into one non-negative least-squares fit of relative error, each network row weighing
`network_weight` parts: the isolated parts pin each coefficient down, the networks say what it is worth
in context.

Off by default (`calibrate(network_weight=0)`): measured on the 2-vCPU EPYC (`benchmarks/NOTES.md`,
"Latency calibration"), a whole network timed once during calibration carries several percent of the
machine's jitter, and weighting 31 of them into the fit made unseen specs' predictions worse (within +-5%:
82% unweighted, 75% at weight 3, 55-65% at 30-1000), while their median ratio to the parts' sum (the
`network_factor`) is robust to it. On a steady device (a GPU, or fake timers in the tests, where a high
weight recovers in-network costs exactly), a positive weight is the better model. Torch-free.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from cmt_gen.latency.features import FEATURES, PART_KINDS, PartShape
from cmt_gen.latency.fit import FitReport, predict, solve_nonnegative

NETWORK_WEIGHT = 0.0  # see the module docstring
OUTLIER_FACTOR, OUTLIER_FLOOR, OUTLIER_SHARE = 3.0, 0.10, 0.10  # as `fit.fit_robust`

Row = tuple[list[float], float, float]  # (features over every kind's columns, seconds, weight)


def _offsets() -> dict[str, int]:
    offsets, at = {}, 0
    for kind in PART_KINDS:
        offsets[kind] = at
        at += len(FEATURES[kind])
    return offsets


OFFSETS = _offsets()  # where each kind's columns start in a row over every kind's features
COLUMNS = sum(len(f) for f in FEATURES.values())


def part_row(part: PartShape, batch: int, channel_block: int = 1) -> list[float]:
    """A part's features placed in its kind's columns, zeros elsewhere."""
    row = [0.0] * COLUMNS
    for j, value in enumerate(part.features(batch, channel_block)):
        row[OFFSETS[part.kind] + j] = value
    return row


def network_row(parts: Sequence[tuple[PartShape, int]], batch: int, channel_block: int = 1) -> list[float]:
    """A network's features: every part's row times how often it runs, summed."""
    total = [0.0] * COLUMNS
    for part, calls in parts:
        for j, value in enumerate(part_row(part, batch, channel_block)):
            total[j] += calls * value
    return total


Network = Sequence[tuple[PartShape, int]]  # a network's `spec_parts`


def fit_joint(parts: Sequence[tuple[PartShape, float]], networks: Sequence[tuple[Network, float]], batch: int,
              network_weight: float = NETWORK_WEIGHT, channel_block: int = 1) -> tuple[dict[str, FitReport], int]:
    """Coefficients per kind from isolated parts and whole networks; returns the per-kind reports (errors
    over that kind's isolated parts) and how many timings were left out as disturbed."""
    rows: list[Row] = [(part_row(p, batch, channel_block), s, 1.0) for p, s in parts]
    rows += [(network_row(n, batch, channel_block), s, network_weight) for n, s in networks]
    x = _solve(rows)
    errors = [abs(predict(x, r) / t - 1) for r, t, _ in rows]
    limit = max(OUTLIER_FACTOR * statistics.median(errors), OUTLIER_FLOOR)
    worst = sorted(range(len(rows)), key=lambda i: -errors[i])[: int(len(rows) * OUTLIER_SHARE)]
    drop = {i for i in worst if errors[i] > limit}
    if drop:
        x = _solve([row for i, row in enumerate(rows) if i not in drop])
    reports = {}
    for kind in PART_KINDS:
        coefficients = tuple(x[OFFSETS[kind]: OFFSETS[kind] + len(FEATURES[kind])])
        own = [(p.features(batch, channel_block), s) for p, s in parts if p.kind == kind]
        kind_errors = [abs(predict(coefficients, f) / s - 1) for f, s in own] or [0.0]
        left_out = sum(1 for i in drop if i < len(parts) and parts[i][0].kind == kind)
        reports[kind] = FitReport(coefficients, len(own), statistics.median(kind_errors), max(kind_errors), left_out)
    return reports, len(drop)


def _solve(rows: Sequence[Row]) -> list[float]:
    """Weighted NNLS of relative error on column-scaled rows: min sum (w (pred/t - 1))^2 with x >= 0."""
    k = len(rows[0][0])
    scale = [max(abs(r[j]) for r, _, _ in rows) or 1.0 for j in range(k)]
    a = [[w * r[j] / scale[j] / t for j in range(k)] for r, t, w in rows]
    x = solve_nonnegative(a, [w for _, _, w in rows])
    return [x[j] / scale[j] for j in range(k)]


def network_predictions(coefficients: Mapping[str, Sequence[float]], parts: Sequence[tuple[PartShape, int]],
                        batch: int, channel_block: int = 1) -> float:
    """Seconds of one network call from per-kind coefficients (no network factor)."""
    return sum(calls * predict(coefficients[p.kind], p.features(batch, channel_block)) for p, calls in parts)
