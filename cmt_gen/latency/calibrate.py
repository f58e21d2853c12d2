"""`calibrate`: time a designed sample of CMT building blocks on a device and fit a latency model.

The sample spans the shapes CMT designs use: for each of the family's four
stage positions (heads 1, 2, 4, 8; K/V reduction 8, 4, 2, 1), map sizes of
inputs from 64 to 320 pixels, channels from 0.3x to 2.2x CMT-S's and
expansion ratios 2 to 6, with some blocks given twice the heads or half the
reduction. Draws are stratified over map sizes and seeded, so two calibrations
time the same shapes. Stems, patch aggregations and heads are sampled the same
way. A block over `MAX_MACS_PER_IMAGE` is redrawn to keep the run short.

Last, seven whole reference networks (CMT-Ti and CMT-XS as released and five
reshaped ones, see `REFERENCE_NETWORKS`) are timed and compared with the sum
of their fitted parts: the median ratio is the
calibration's `network_factor`, what running blocks back to back inside one
network (caches holding other blocks' weights, the glue between stages) costs
beyond timing each alone. It multiplies every prediction.

The timers are parameters: `TorchPartTimer` measures on the device, and a
test's fake timers make the whole pipeline checkable exactly.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

from cmt_gen.latency.calibration_file import (
    FORMS,
    CalibratedBlockOptions,
    Calibration,
    CalibrationError,
    installed_torch_version,
)
from cmt_gen.latency.features import FEATURES, PART_KINDS, PartShape
from cmt_gen.latency.fit import fit_robust

STAGE_HEADS = (1, 2, 4, 8)
STAGE_REDUCTIONS = (8, 4, 2, 1)
STAGE_CHANNELS = (64, 128, 256, 512)  # CMT-S; sampled from 0.3x to 2.2x
RESOLUTIONS = tuple(range(64, 321, 32))  # small inputs pin down the per-call overhead
MAX_MACS_PER_IMAGE = 700e6

def _per_stage(field: str, values: tuple) -> list[str]:
    return [f"stages.{i}.{field}={v}" for i, v in enumerate(values)]


# Whole networks timed for the network factor: CMT-Ti and CMT-XS as released plus reshaped ones (narrower and
# wider stages, low and high expansion, other depths and sizes), so the factor is a median over the
# kinds of networks `design` and `sample` produce, not over three of one family only.
REFERENCE_NETWORKS: tuple[tuple[str, str, list[str]], ...] = (
    ("cmt_ti", "cmt_ti", []),
    ("cmt_xs", "cmt_xs", []),
    ("cmt_ti at 224 px", "cmt_ti", ["resolution=224"]),
    ("cmt_xs, expansion 2.5, at 160 px", "cmt_xs", ["resolution=160", *_per_stage("expansion", (2.5,) * 4)]),
    ("cmt_xs, wide (64-512), deep stage 3, at 224 px", "cmt_xs",
     ["resolution=224", *_per_stage("channels", (64, 128, 256, 512)), "stages.2.depth=8"]),
    ("cmt_ti, narrow (32-256), expansion 5, at 256 px", "cmt_ti",
     ["resolution=256", *_per_stage("channels", (32, 64, 128, 256)), *_per_stage("expansion", (5.0,) * 4)]),
    ("cmt_xs at 256 px", "cmt_xs", ["resolution=256"]),
)
DEFAULT_BLOCKS_PER_STAGE = 24
DEFAULT_MIN_TIME = 0.15  # seconds per timed repeat of a block (three repeats, the fastest kept)
# Upper bounds of the two knobs: far beyond a useful calibration (the default takes minutes), short of
# one that fills memory with its plan or never ends.
MAX_BLOCKS_PER_STAGE = 1000
MAX_MIN_TIME = 60.0

PartTimer = Callable[[PartShape], float]
NetworkTimer = Callable[[object], float]  # a CMTSpec -> seconds per call
Progress = Callable[[int, int, str], None]


def _channels(rng: random.Random, base: int, multiple: int) -> int:
    value = math.exp(rng.uniform(math.log(0.3 * base), math.log(2.2 * base)))
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_parts(blocks_per_stage: int = DEFAULT_BLOCKS_PER_STAGE, seed: int = 0) -> list[PartShape]:
    """The shapes to time: blocks per stage position, then stems, patch aggregations and heads."""
    rng = random.Random(seed)
    parts: list[PartShape] = []
    for i, (heads, k, base) in enumerate(zip(STAGE_HEADS, STAGE_REDUCTIONS, STAGE_CHANNELS, strict=True)):
        sizes = [RESOLUTIONS[j % len(RESOLUTIONS)] for j in range(blocks_per_stage)]
        rng.shuffle(sizes)
        for resolution in sizes:
            while True:
                h, r = heads, k
                if rng.random() < 0.2:
                    h = heads * 2
                if r > 1 and rng.random() < 0.2:
                    r = k // 2
                side = resolution // 2 ** (i + 2)
                c = _channels(rng, base, math.lcm(h, 8))
                hidden = int(c * (2 + 0.25 * rng.randrange(17)))
                part = PartShape("block", side, side, c, c, h, r, hidden)
                if part.macs() <= MAX_MACS_PER_IMAGE:
                    break
            parts.append(part)
    n_small = max(2 * len(FEATURES["head"]), blocks_per_stage // 2)  # enough to tell every feature apart
    for j in range(n_small):
        resolution = RESOLUTIONS[j % len(RESOLUTIONS)]
        parts.append(PartShape("stem", resolution, resolution, 3, 8 * rng.randrange(1, 7)))
    for j in range(max(2 * len(FEATURES["patch"]), blocks_per_stage // 2)):
        i = j % 4
        resolution = rng.choice(RESOLUTIONS)
        c_in = 8 * rng.randrange(1, 7) if i == 0 else _channels(rng, STAGE_CHANNELS[i - 1], 8)
        side = resolution // 2 ** (i + 1)
        parts.append(PartShape("patch", side, side, c_in, _channels(rng, STAGE_CHANNELS[i], 8)))
    for j in range(n_small):
        side = rng.choice(RESOLUTIONS) // 32
        fc = 1280 if j % 3 else rng.choice((640, 1024, 1536))
        classes = 1000 if j % 4 else rng.choice((0, 10, 100))
        parts.append(PartShape("head", side, side, _channels(rng, STAGE_CHANNELS[3], 8), fc, classes=classes))
    return parts


def fit_parts(measured: list[tuple[PartShape, float]], batch_size: int) -> dict:
    """One non-negative fit per part kind, on features at the calibration's batch."""
    from cmt_gen.latency.calibration_file import PartModel

    models = {}
    for kind in PART_KINDS:
        rows = [(p.features(batch_size), s) for p, s in measured if p.kind == kind]
        if not rows:
            raise CalibrationError(f"no {kind} was measured; cannot fit its latency", field="parts")
        report = fit_robust([r for r, _ in rows], [s for _, s in rows])
        models[kind] = PartModel(features=list(FEATURES[kind]), coefficients=list(report.coefficients),
                                 samples=report.samples, median_error=report.median_error,
                                 worst_error=report.worst_error, outliers=report.outliers)
    return models


def calibrate(*, device: str = "auto", precision: str | None = None, batch_size: int | None = None,
              threads: int | None = None, form: str = "deploy", allocator: str = "auto",
              blocks_per_stage: int | None = None, min_time: float | None = None, repeats: int = 3,
              seed: int = 0, timer: PartTimer | None = None,
              network_timer: NetworkTimer | None = None, progress: Progress | None = None) -> Calibration:
    """Measure the planned building blocks on the device, fit per kind, return the calibration.

    Device, precision, batch size and threads resolve as for `cmt-gen profile`
    (batch 8 on CPU by default). `timer` replaces the device measurement
    (seconds per call of a part) and `network_timer` that of the reference
    networks; tests pass synthetic ones. A `timer` without a `network_timer`
    leaves the network factor at 1.
    """
    from cmt_gen.latency.measure import TorchPartTimer
    from cmt_gen.profile.bench import run_environment
    from cmt_gen.profile.settings import resolve_settings

    if form not in FORMS:
        raise CalibrationError(f"unknown form {form!r}; use {' or '.join(FORMS)}", field="form")
    blocks_per_stage = DEFAULT_BLOCKS_PER_STAGE if blocks_per_stage is None else blocks_per_stage
    min_time = DEFAULT_MIN_TIME if min_time is None else min_time
    if (isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int)
            or not 3 <= blocks_per_stage <= MAX_BLOCKS_PER_STAGE):
        raise CalibrationError(f"must be a whole number from 3 to {MAX_BLOCKS_PER_STAGE}, got {blocks_per_stage!r}",
                               field="blocks")
    if not (math.isfinite(min_time) and 0 <= min_time <= MAX_MIN_TIME):
        raise CalibrationError(f"must be a number of seconds from 0 to {MAX_MIN_TIME:g}, got {min_time}",
                               field="min_time")
    settings = resolve_settings(device=device, precision=precision, batch_size=batch_size, threads=threads, form=form,
                                allocator=allocator)
    plan = plan_parts(blocks_per_stage, seed)
    started = time.perf_counter()
    with run_environment(settings):
        from cmt_gen.profile.env import fingerprint

        environment = fingerprint(settings.device)
        device_timer = TorchPartTimer(settings, CalibratedBlockOptions(), min_time=min_time, repeats=repeats, form=form)
        measure = timer or device_timer
        whole = network_timer or (None if timer else device_timer.network)
        # Timed in a shuffled order, so a burst of other load on the machine spreads over every kind
        # and size of block instead of biasing one stage's.
        order = list(range(len(plan)))
        random.Random(seed + 1).shuffle(order)
        total = len(plan) + (len(REFERENCE_NETWORKS) if whole is not None else 0)  # known before the first step
        times: dict[int, float] = {}
        for n, index in enumerate(order):
            part = plan[index]
            if progress:
                progress(n, total, part.describe())
            seconds = float(measure(part))
            if not (math.isfinite(seconds) and seconds > 0):
                raise CalibrationError(f"timing {part.describe()} gave {seconds} s", field="parts")
            times[index] = seconds
        measured = [(plan[i], times[i]) for i in range(len(plan))]
        if progress:
            progress(len(plan), total, "fitting")
        models = fit_parts(measured, settings.batch_size)
        references = _reference_times(whole, models, settings.batch_size, progress, len(plan), total)
        if progress:
            progress(total, total, "done")
    ratios = sorted(r["measured_seconds"] / r["parts_seconds"] for r in references)
    factor = statistics.median(ratios) if ratios else 1.0
    return Calibration(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={"device": settings.device, "device_type": settings.device_type, "precision": settings.precision,
                  "batch_size": settings.batch_size, "threads": settings.threads, "form": form,
                  "allocator": settings.allocator},
        machine=environment.get("device_name") or environment.get("cpu") or "unknown",
        torch_version=installed_torch_version() or environment.get("torch", "unknown"),
        environment=environment, parts=models, network_factor=factor, references=references,
        measurements=[{"kind": p.kind, "shape": _shape_dict(p), "seconds": s} for p, s in measured],
        seconds=time.perf_counter() - started,
    )


def _reference_times(whole: NetworkTimer | None, models: dict, batch: int, progress: Progress | None,
                     done: int, total: int) -> list[dict]:
    """Each reference network's measured seconds beside the sum of its fitted parts."""
    if whole is None:
        return []
    from cmt_gen.latency.features import spec_parts
    from cmt_gen.latency.fit import predict
    from cmt_gen.spec.loading import load_spec

    found = []
    for n, (name, base, overrides) in enumerate(REFERENCE_NETWORKS):
        spec = load_spec(base, overrides or None)
        if progress:
            progress(done + n, total, f"reference network {name}")
        parts = sum(calls * predict(models[p.kind].coefficients, p.features(batch)) for p, calls in spec_parts(spec))
        found.append({"name": name, "resolution": spec.resolution, "measured_seconds": float(whole(spec)),
                      "parts_seconds": parts})
    return found


def _shape_dict(part: PartShape) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(part).items() if k != "kind"}
