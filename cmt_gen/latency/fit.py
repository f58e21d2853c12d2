"""Fitting a latency model: non-negative weighted least squares on relative error.

For each kind of building block, seconds = sum_j c_j * feature_j with every
c_j >= 0 (a cost per MAC, per element or per call cannot be negative, and the
constraint keeps the model from cancelling terms it cannot tell apart).
Rows are weighted by 1 / measured seconds, so a 1 ms block counts as much as a
100 ms one: the target is relative error. Columns are scaled to unit size
before solving, since the features span ten orders of magnitude. Timings the
model can represent exactly are recovered exactly (see the tests).

The solver is scipy's NNLS where scipy is installed (the `calibrate` extra),
else a pure-Python Lawson-Hanson kept as the fallback, so the package itself
needs neither scipy nor torch to fit or predict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FitReport:
    """Coefficients of one part kind's model and how well they reproduce their own measurements."""

    coefficients: tuple[float, ...]
    samples: int
    median_error: float  # |predicted / measured - 1| over all the calibration's own samples
    worst_error: float
    outliers: int = 0  # samples left out of the final fit (still counted in the errors)


def fit_robust(rows: Sequence[Sequence[float]], seconds: Sequence[float]) -> FitReport:
    """`fit_nonnegative`, then once more without the timings a burst of other load disturbed.

    A timing whose error is over 3x the median error (and over 10%) is left out of the
    second fit, at most a tenth of them; the errors reported still cover every sample.
    """
    first = fit_nonnegative(rows, seconds)
    errors = [abs(predict(first.coefficients, r) / t - 1) for r, t in zip(rows, seconds, strict=True)]
    limit = max(3 * first.median_error, 0.10)
    worst = sorted(range(len(rows)), key=lambda i: -errors[i])[: len(rows) // 10]
    drop = {i for i in worst if errors[i] > limit}
    if not drop or len(rows) - len(drop) < len(rows[0]):
        return first
    kept = [i for i in range(len(rows)) if i not in drop]
    second = fit_nonnegative([rows[i] for i in kept], [seconds[i] for i in kept])
    return _report(second.coefficients, rows, seconds, len(drop))


def fit_nonnegative(rows: Sequence[Sequence[float]], seconds: Sequence[float]) -> FitReport:
    """Weighted NNLS on the column-scaled rows: min ||A x - 1|| with x >= 0, A = rows / scale / seconds."""
    if not rows or len(rows) != len(seconds):
        raise ValueError("a fit needs one measured time per feature row, and at least one row")
    k = len(rows[0])
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(k)]
    a = [[r[j] / scale[j] / t for j in range(k)] for r, t in zip(rows, seconds, strict=True)]
    x = solve_nonnegative(a)
    return _report(tuple(x[j] / scale[j] for j in range(k)), rows, seconds)


def solve_nonnegative(a: list[list[float]], targets: Sequence[float] | None = None) -> list[float]:
    """min ||a x - b|| with x >= 0 (b: `targets`, all ones by default): `scipy.optimize.nnls` when scipy is
    installed, else `_nnls`.

    scipy solves on `a` itself (Householder QR); the fallback works on the normal equations, whose
    condition number is cond(a) squared. On timings the model represents exactly, scipy recovers the
    coefficients to about 1e-14 and the fallback to about 1e-8; on real timings the two fits agree to
    about 1e-9, far inside the timing noise, so a calibration without scipy is as good in practice.
    """
    b = [1.0] * len(a) if targets is None else [float(v) for v in targets]
    try:
        from scipy.optimize import nnls
    except ImportError:
        k = len(a[0])
        ata = [[sum(row[i] * row[j] for row in a) for j in range(k)] for i in range(k)]
        return _nnls(ata, [sum(row[i] * v for row, v in zip(a, b, strict=True)) for i in range(k)])
    import numpy as np

    x, _ = nnls(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return [float(v) for v in x]


def _report(coefficients: tuple[float, ...], rows, seconds, outliers: int = 0) -> FitReport:
    errors = [abs(predict(coefficients, r) / t - 1) for r, t in zip(rows, seconds, strict=True)]
    return FitReport(coefficients, len(rows), statistics.median(errors), max(errors), outliers)


def predict(coefficients: Sequence[float], features: Sequence[float]) -> float:
    return sum(c * f for c, f in zip(coefficients, features, strict=True))


def _nnls(ata: list[list[float]], atb: list[float], tol: float = 1e-12) -> list[float]:
    """min ||Ax - b|| with x >= 0, given A^T A and A^T b (Lawson-Hanson)."""
    k = len(atb)
    x = [0.0] * k
    passive: set[int] = set()
    for _ in range(3 * k + 10):
        grad = [atb[i] - sum(ata[i][j] * x[j] for j in range(k)) for i in range(k)]
        candidates = [i for i in range(k) if i not in passive and grad[i] > tol * max(1.0, abs(atb[i]))]
        if not candidates:
            break
        passive.add(max(candidates, key=lambda i: grad[i]))
        while True:
            z = _solve_subset(ata, atb, sorted(passive))
            if all(z[i] > 0 for i in passive):
                x = z
                break
            steps = [x[i] / (x[i] - z[i]) for i in passive if z[i] <= 0 and x[i] - z[i] > 0]
            alpha = min(steps) if steps else 0.0
            x = [x[i] + alpha * (z[i] - x[i]) for i in range(k)]
            passive = {i for i in passive if x[i] > tol}
            if not passive:
                break
    return x


def _solve_subset(ata: list[list[float]], atb: list[float], idx: list[int]) -> list[float]:
    """Least squares restricted to the columns `idx` (others 0): Gaussian elimination with pivoting."""
    n = len(idx)
    m = [[ata[i][j] for j in idx] + [atb[i]] for i in idx]
    ridge = 1e-14 * max((m[i][i] for i in range(n)), default=1.0)
    for i in range(n):
        m[i][i] += ridge
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        if abs(m[col][col]) < 1e-300:
            continue
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            if f:
                for c in range(col, n + 1):
                    m[r][c] -= f * m[col][c]
    sol = [0.0] * n
    for i in range(n - 1, -1, -1):
        s = m[i][n] - sum(m[i][j] * sol[j] for j in range(i + 1, n))
        sol[i] = s / m[i][i] if abs(m[i][i]) > 1e-300 else 0.0
    out = [0.0] * len(atb)
    for j, i in enumerate(idx):
        out[i] = sol[j] if math.isfinite(sol[j]) else 0.0
    return out
