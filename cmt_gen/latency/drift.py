"""Keeping a calibration to one machine speed while other work on the machine comes and goes.

A shared machine runs slower for minutes at a time (another tenant's load on the shared caches and
memory). A calibration times its plan in a shuffled order and times one fixed network, the drift
reference, first, every `DRIFT_EVERY` items and last. Each timing is then scaled to the reference's median
speed over the run, read off the reference's smoothed curve at the moment it was taken; if the smoothed
reference moved more than `max_drift` over the run, the calibration is refused rather than fitted to two
machines at once. The reference's median is recorded, so a later run can say how far the machine has
moved since. Torch-free.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from cmt_gen.latency.calibration_file import CalibrationError

DRIFT_REFERENCE = ("cmt_ti", [])  # CMT-Ti as released, at 160 px: a tenth of a second at batch 8 on one core
# Timed items between two timings of the drift reference: 15 timings in a default run rather than 8, for a
# steadier median (the level every timing is scaled to, and what `predict --measure` compares the machine
# with): at 3% jitter a timing, its standard error falls from about 1.3% to 1%, for some 10 s more.
DRIFT_EVERY = 12
MAX_DRIFT = 0.15


def reference_spec():
    """The drift reference as a spec (a CMTSpec), for the calibration and for `predict --measure` alike."""
    from cmt_gen.spec.loading import load_spec

    return load_spec(DRIFT_REFERENCE[0], DRIFT_REFERENCE[1] or None)


@dataclass
class TimedPlan:
    """Seconds per plan item, the order each was timed in, and the drift reference's timings."""

    seconds: list[float]
    total: int  # progress steps, known before the first
    position: dict[int, int] = field(default_factory=dict)  # plan index -> place in the timing order
    reference: list[tuple[int, float]] = field(default_factory=list)  # (place in the order, seconds)


def smoothed(values: list[float]) -> list[float]:
    """Running median of three, the ends as timed: one disturbed reference timing inside the run moves no
    correction, and a steady drift passes unchanged (a median of three points on a line is the middle one)."""
    return [v if i in (0, len(values) - 1) else statistics.median(values[i - 1: i + 2]) for i, v in enumerate(values)]


def correct_drift(timed: TimedPlan, max_drift: float = MAX_DRIFT) -> list[dict]:
    """Scale every timing to the drift reference's median speed; refuse a run whose machine moved too far.

    Returns the reference's timings as the calibration records them.
    """
    if not timed.reference:
        return []
    places = [at for at, _ in timed.reference]
    raw = [s for _, s in timed.reference]
    curve = smoothed(raw)
    record = [{"at": at, "seconds": s, "smoothed": c} for at, s, c in zip(places, raw, curve, strict=True)]
    if len(raw) < 2:
        return record
    moved = max(curve) / min(curve) - 1
    if moved > max_drift:
        raise CalibrationError(
            f"the machine's speed moved {moved * 100:.0f}% during calibration (the drift reference "
            f"{DRIFT_REFERENCE[0]} took {min(raw) * 1000:.0f}-{max(raw) * 1000:.0f} ms a call), over the "
            f"{max_drift * 100:.0f}% allowed: other work shared the device; calibrate again when it is quiet, "
            "or allow more with --max-drift", field="drift")
    level = statistics.median(raw)
    for index, place in timed.position.items():
        timed.seconds[index] *= level / _interpolate(places, curve, place)
    return record


def _interpolate(places: list[int], values: list[float], at: int) -> float:
    """The curve through (places, values) at `at`, linear between points and flat beyond the ends."""
    if at <= places[0]:
        return values[0]
    for k in range(1, len(places)):
        a, b = places[k - 1], places[k]
        if at <= b:
            return values[k - 1] + (values[k] - values[k - 1]) * (at - a) / (b - a) if b > a else values[k]
    return values[-1]
