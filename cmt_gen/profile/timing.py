"""Timing device work honestly: synchronised clocks, warm-up excluded, repeats and percentiles.

On CUDA a span is timed with CUDA events recorded on the stream (the GPU's own
timeline, one synchronisation at the end of the span); on MPS and CPU with
`perf_counter` after synchronising the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# A timed repeat never runs more calls than this, whatever --min-time asks for.
MAX_CALLS_PER_REPEAT = 100_000


class Clock:
    """Times `n` calls of a function on one device; `sync()` waits for queued device work."""

    def __init__(self, device: str):
        self.device = device
        self.kind = device.split(":")[0]

    def sync(self) -> None:
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        elif self.kind == "mps":
            import torch

            torch.mps.synchronize()

    def time(self, fn: Callable[[], object], n: int = 1) -> float:
        """Seconds taken by n back-to-back calls, from an idle device to the last call's completion."""
        if self.kind == "cuda":
            import torch

            self.sync()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        self.sync()
        begin = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return time.perf_counter() - begin


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
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)
