"""Timing device work honestly: synchronised clocks, warm-up excluded, repeats and percentiles.

How a span is timed is the device's answer (`Device.time_calls`): on CUDA with
CUDA events recorded on the stream (the GPU's own timeline, one synchronisation
at the end of the span); on MPS and CPU with `perf_counter` after synchronising
the device.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from cmt_gen.devices import device_for

# A timed repeat never runs more calls than this, whatever --min-time asks for.
MAX_CALLS_PER_REPEAT = 100_000


class Clock:
    """Times `n` calls of a function on one device; `sync()` waits for queued device work."""

    def __init__(self, device: str):
        self.device = device
        self.kind = device.split(":")[0]
        self._device = device_for(self.kind)

    def sync(self) -> None:
        self._device.synchronize(self.device)

    def time(self, fn: Callable[[], object], n: int = 1) -> float:
        """Seconds taken by n back-to-back calls, from an idle device to the last call's completion."""
        return self._device.time_calls(self.device, fn, n)


@dataclass
class ThroughputRun:
    """Images per second of each timed repeat, and how many calls each repeat made.

    `kept` is how many of the last repeats the result uses: all of them unless the
    run was extended because the spread was high, in which case the earlier,
    disturbed repeats are dropped (and counted) and `noisy` says whether the
    kept window still spreads more than allowed.
    """

    rates: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    kept: int = 0
    noisy: bool = False

    @property
    def window(self) -> list[float]:
        return self.rates[len(self.rates) - self.kept:] if self.kept else list(self.rates)

    @property
    def dropped(self) -> int:
        return len(self.rates) - len(self.window)


def spread(rates: Sequence[float]) -> float | None:
    """Half the min-max range relative to the median; None for fewer than two values (nothing to spread)."""
    if len(rates) < 2:
        return None
    middle = median(rates)
    return (max(rates) - min(rates)) / 2 / middle if middle else None


def calls_for(seconds_per_call: float | None, iters: int, min_time: float) -> int:
    """Calls in one repeat: at least `iters`, and enough to last `min_time` at the estimated pace."""
    if not min_time or not seconds_per_call or seconds_per_call <= 0:
        return max(1, iters)
    return int(min(MAX_CALLS_PER_REPEAT, max(iters, math.ceil(min_time / seconds_per_call), 1)))


def measure_throughput(step: Callable[[], object], batch: int, clock: Clock, *, warmup: int, iters: int,
                       min_time: float, repeats: int, max_spread: float | None = None, extend_time: float = 0.0,
                       progress: Callable[[str], None] | None = None) -> ThroughputRun:
    """Warm up (untimed for the result, but paced), then time `repeats` spans of calls.

    Each warm-up call is synchronised on its own, so the last one gives the pace
    from which the first repeat's call count is planned; later repeats use the
    pace just measured. While the last `repeats` rates spread more than
    `max_spread`, more repeats run, for at most `extend_time` more seconds; the
    result keeps the last `repeats` and says whether they are still noisy.
    """
    pace: float | None = None
    for i in range(warmup):
        if progress:
            progress(f"warm-up {i + 1}/{warmup}")
        pace = clock.time(step, 1)
    run = ThroughputRun()
    for r in range(repeats):
        if progress:
            progress(f"repeat {r + 1}/{repeats}")
        n = calls_for(pace, iters, min_time)
        seconds = clock.time(step, n)
        if seconds <= 0:
            raise RuntimeError(f"clock measured {seconds} s for {n} calls; cannot compute a rate")
        run.rates.append(n * batch / seconds)
        run.calls.append(n)
        run.seconds.append(seconds)
        pace = seconds / n
    run.kept = len(run.rates)
    if max_spread is None or repeats < 2:
        return run
    extended = 0.0
    while (spread(run.window) or 0.0) > max_spread and extended < extend_time:
        if progress:
            progress(f"spread {spread(run.window) * 100:.0f}%: extra repeat {len(run.rates) + 1}")
        n = calls_for(pace, iters, min_time)
        seconds = clock.time(step, n)
        run.rates.append(n * batch / seconds)
        run.calls.append(n)
        run.seconds.append(seconds)
        extended += seconds
        pace = seconds / n
    run.noisy = (spread(run.window) or 0.0) > max_spread
    return run


def measure_latency(call: Callable[[], object], clock: Clock, *, warmup: int, samples: int, min_time: float,
                    max_samples: int, progress: Callable[[str], None] | None = None) -> list[float]:
    """Seconds of single synchronised calls: at least `samples` and `min_time` of them, at most `max_samples`."""
    for _ in range(warmup):
        clock.time(call, 1)
    times: list[float] = []
    total = 0.0
    while len(times) < max_samples and (len(times) < samples or total < min_time):
        if progress and (len(times) % 5 == 0):
            progress(f"latency sample {len(times) + 1}")
        seconds = clock.time(call, 1)
        times.append(seconds)
        total += seconds
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    `statistics.quantiles(method="inclusive")` is that interpolation; it cuts at
    multiples of 1/n, so q/100 is taken as a fraction k/n (90 -> 9/10, 99.9 ->
    999/1000), to a hundredth of a percent. One value, q = 0 and q = 100 are
    the order statistics themselves (quantiles wants two values and cuts inside).
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    share = (Fraction(str(q)) / 100).limit_denominator(10_000)
    if len(ordered) == 1 or share <= 0:
        return ordered[0]
    if share >= 1:
        return ordered[-1]
    cuts = statistics.quantiles(ordered, n=share.denominator, method="inclusive")
    return cuts[share.numerator - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)
