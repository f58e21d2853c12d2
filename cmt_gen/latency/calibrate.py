"""`calibrate`: time a designed sample of CMT building blocks and whole networks on a device, fit a latency model.

The sample spans the shapes CMT designs use: for each of the family's four
stage positions (heads 1, 2, 4, 8; K/V reduction 8, 4, 2, 1), map sizes of
inputs from 64 to 384 pixels, channels from 0.3x to 2.2x CMT-S's and
expansion ratios 2 to 6, with some blocks given twice the heads or half the
reduction. Draws are stratified over map sizes and seeded, so two calibrations
time the same shapes. Stems, patch aggregations and heads are sampled the same
way. A block over `MAX_MACS_PER_IMAGE` is redrawn to keep the run short.

Whole networks are timed beside them: seven reference networks (CMT-Ti and
CMT-XS as released and five reshaped ones, `REFERENCE_NETWORKS`) and
`networks` drawn over the whole design space (`latency.networks`). The
median of whole network / the sum of its fitted parts over all of them is the
`network_factor`, what running blocks back to back in one network costs
beyond timing each alone; it multiplies every prediction. With a positive
`network_weight` the networks also go into the fit itself (`latency.joint_fit`;
off by default, see there why). A fixed network timed all along corrects the
timings for the machine's drift, or refuses the run (`latency.drift`).

Blocks' and stems' channels count in whole blocks of the device's vector
width (`channel_block` and `padded_kinds`, recorded in the file; see
`PartShape.padded`).

Every item is timed as the profiler times a network: the median of three
repeats. The timers are parameters: `TorchPartTimer` measures on the device,
and a test's fake timers make the whole pipeline checkable exactly.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from cmt_gen.latency import drift as drift_rules
from cmt_gen.latency.calibration_file import (
    FORMS,
    CalibratedBlockOptions,
    Calibration,
    CalibrationError,
    installed_torch_version,
)
from cmt_gen.latency.drift import DRIFT_EVERY, DRIFT_REFERENCE, TimedPlan, correct_drift, reference_spec
from cmt_gen.latency.features import FEATURES, PADDED_KINDS, PART_KINDS, PartShape, spec_parts
from cmt_gen.latency.fit import fit_robust
from cmt_gen.latency.joint_fit import NETWORK_WEIGHT, fit_joint, network_predictions
from cmt_gen.latency.networks import DEFAULT_NETWORKS, draw_networks

STAGE_HEADS = (1, 2, 4, 8)
STAGE_REDUCTIONS = (8, 4, 2, 1)
STAGE_CHANNELS = (64, 128, 256, 512)  # CMT-S; sampled from 0.3x to 2.2x
RESOLUTIONS = tuple(range(64, 385, 32))  # small inputs pin down the per-call overhead
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
DEFAULT_MIN_TIME = 0.15  # seconds per timed repeat of a block (three repeats, the median kept)
# How many times every part is timed, each at its own place in the shuffled run, each timing a row of the
# fit. More passes steady the fit against short bursts of other load, but on a shared VM most of what moves
# one calibration against the next is the machine's state over minutes, which no pass inside one run sees:
# two passes cost about 60% more time for little gain (`benchmarks/NOTES.md`, "Parts timed twice").
DEFAULT_PART_PASSES = 1
# Upper bounds of the two knobs: far beyond a useful calibration (the default takes minutes), short of
# one that fills memory with its plan or never ends.
MAX_BLOCKS_PER_STAGE = 1000
MAX_MIN_TIME = 60.0
MAX_NETWORKS = 500
MAX_PART_PASSES = 10
MAX_CHANNEL_BLOCK = 64

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


def fit_parts(measured: list[tuple[PartShape, float]], batch_size: int,
              networks: list[tuple[list, float]] | None = None, network_weight: float = NETWORK_WEIGHT,
              channel_block: int = 1) -> dict:
    """Per-kind models: one joint non-negative fit of the isolated parts and (where timed) whole networks,
    given as (their `spec_parts`, seconds); without networks, one fit per kind on the parts alone. Features
    count channels in whole blocks of `channel_block` (`PartShape.features`)."""
    from cmt_gen.latency.calibration_file import PartModel

    for kind in PART_KINDS:
        if not any(p.kind == kind for p, _ in measured):
            raise CalibrationError(f"no {kind} was measured; cannot fit its latency", field="parts")
    if networks and network_weight > 0:
        reports, _ = fit_joint(measured, networks, batch_size, network_weight, channel_block)
    else:
        reports = {kind: fit_robust([p.features(batch_size, channel_block) for p, _ in measured if p.kind == kind],
                                    [s for p, s in measured if p.kind == kind]) for kind in PART_KINDS}
    return {kind: PartModel(features=list(FEATURES[kind]), coefficients=list(r.coefficients), samples=r.samples,
                            median_error=r.median_error, worst_error=r.worst_error, outliers=r.outliers)
            for kind, r in reports.items()}


def calibrate(*, device: str = "auto", precision: str | None = None, batch_size: int | None = None,
              threads: int | None = None, form: str = "deploy", allocator: str = "auto",
              blocks_per_stage: int | None = None, min_time: float | None = None, repeats: int = 3,
              networks: int | None = None, part_passes: int | None = None,
              network_weight: float = NETWORK_WEIGHT, max_drift: float | None = None,
              channel_block: int | None = None, seed: int = 0, timer: PartTimer | None = None,
              network_timer: NetworkTimer | None = None, progress: Progress | None = None) -> Calibration:
    """Measure the planned building blocks and whole networks on the device, fit, return the calibration.

    Device, precision, batch size and threads resolve as for `cmt-gen profile`
    (batch 8 on CPU by default). `timer` replaces the device measurement
    (seconds per call of a part) and `network_timer` that of whole networks
    (the reference networks, the `networks` drawn ones and the drift reference);
    tests pass synthetic ones. Every part is timed `part_passes` times (default
    `DEFAULT_PART_PASSES`), each at its own place in the shuffled run. A
    `timer` without a `network_timer` times no network: the fit is on parts
    alone and the network factor stays 1.
    `channel_block` (default: the device's, `measure.device_channel_block`)
    is how many channels its kernels work on at once; features count
    channels in whole blocks of it.
    """
    from cmt_gen.latency.measure import TorchPartTimer, device_channel_block
    from cmt_gen.profile.bench import run_environment
    from cmt_gen.profile.settings import resolve_settings

    if form not in FORMS:
        raise CalibrationError(f"unknown form {form!r}; use {' or '.join(FORMS)}", field="form")
    blocks_per_stage = DEFAULT_BLOCKS_PER_STAGE if blocks_per_stage is None else blocks_per_stage
    min_time = DEFAULT_MIN_TIME if min_time is None else min_time
    networks = DEFAULT_NETWORKS if networks is None else networks
    part_passes = DEFAULT_PART_PASSES if part_passes is None else part_passes
    max_drift = drift_rules.MAX_DRIFT if max_drift is None else max_drift
    _check_whole(blocks_per_stage, 3, MAX_BLOCKS_PER_STAGE, "blocks")
    _check_whole(networks, 0, MAX_NETWORKS, "networks")
    _check_whole(part_passes, 1, MAX_PART_PASSES, "part_passes")
    if not (math.isfinite(min_time) and 0 <= min_time <= MAX_MIN_TIME):
        raise CalibrationError(f"must be a number of seconds from 0 to {MAX_MIN_TIME:g}, got {min_time}",
                               field="min_time")
    if channel_block is not None:
        _check_whole(channel_block, 1, MAX_CHANNEL_BLOCK, "channel_block")
    if not (math.isfinite(max_drift) and 0 < max_drift <= 1):
        raise CalibrationError(f"must be a fraction above 0 and at most 1, got {max_drift}", field="max_drift")
    settings = resolve_settings(device=device, precision=precision, batch_size=batch_size, threads=threads, form=form,
                                allocator=allocator)
    block_source = "as given (--channel-block)"
    if channel_block is None:
        channel_block, block_source = device_channel_block(settings.device_type)
    started = time.perf_counter()
    with run_environment(settings):
        from cmt_gen.profile.env import fingerprint

        environment = {**fingerprint(settings.device), "channel_block_source": block_source}
        device_timer = TorchPartTimer(settings, CalibratedBlockOptions(), min_time=min_time, repeats=repeats, form=form)
        measure = timer or device_timer
        whole = network_timer or (None if timer else device_timer.network)
        plan = _plan(blocks_per_stage, networks if whole else None, seed, part_passes)
        timed = _time_plan(plan, measure, whole, seed, progress)
        drift = correct_drift(timed, max_drift)
        parts = [(item, seconds) for item, seconds in zip(plan, timed.seconds, strict=True)
                 if isinstance(item, PartShape)]
        wholes = [(item, seconds) for item, seconds in zip(plan, timed.seconds, strict=True)
                  if not isinstance(item, PartShape)]
        if progress:
            progress(timed.total - 1, timed.total, "fitting")
        models = fit_parts(parts, settings.batch_size, [(spec_parts(n.spec), s) for n, s in wholes], network_weight,
                           channel_block)
        if progress:
            progress(timed.total, timed.total, "done")
    coefficients = {kind: m.coefficients for kind, m in models.items()}
    references = [{"name": n.name, "resolution": n.spec.resolution, "measured_seconds": s,
                   "parts_seconds": network_predictions(coefficients, spec_parts(n.spec), settings.batch_size,
                                                        channel_block)}
                  for n, s in wholes]
    ratios = sorted(r["measured_seconds"] / r["parts_seconds"] for r in references)
    factor = statistics.median(ratios) if ratios else 1.0
    return Calibration(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={"device": settings.device, "device_type": settings.device_type, "precision": settings.precision,
                  "batch_size": settings.batch_size, "threads": settings.threads, "form": form,
                  "allocator": settings.allocator},
        machine=environment.get("device_name") or environment.get("cpu") or "unknown",
        torch_version=installed_torch_version() or environment.get("torch", "unknown"),
        environment=environment, parts=models, channel_block=channel_block, padded_kinds=PADDED_KINDS,
        network_factor=factor,
        references=references,
        measurements=[{"kind": p.kind, "shape": _shape_dict(p), "seconds": s} for p, s in parts],
        drift=drift, seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class Network:
    """A whole network of the calibration plan: a reference, a drawn one, or the drift reference."""

    name: str
    spec: object  # CMTSpec


def _plan(blocks_per_stage: int, networks: int | None, seed: int, part_passes: int = 1) -> list:
    """Parts (each `part_passes` times), then the reference networks and `networks` drawn ones (None: no
    network is timed at all)."""
    from cmt_gen.spec.loading import load_spec

    plan: list = list(plan_parts(blocks_per_stage, seed)) * part_passes
    if networks is None:
        return plan
    plan += [Network(name, load_spec(base, overrides or None)) for name, base, overrides in REFERENCE_NETWORKS]
    plan += [Network(name, spec) for name, spec in draw_networks(networks, seed)]
    return plan


def _time_plan(plan: list, measure: PartTimer, whole: NetworkTimer | None, seed: int,
               progress: Progress | None) -> TimedPlan:
    """Time every item in a shuffled order (a burst of other load spreads over every kind and size), with
    the drift reference timed first, every `DRIFT_EVERY` items and last."""
    items = [i for i, item in enumerate(plan) if whole is not None or isinstance(item, PartShape)]
    random.Random(seed + 1).shuffle(items)
    drift_spec = reference_spec()
    checks = 0 if whole is None else -(-len(items) // DRIFT_EVERY) + 1  # every DRIFT_EVERY items, and last
    total = len(items) + checks + 1  # known before the first step; the last step is the fit
    timed = TimedPlan(seconds=[0.0] * len(plan), total=total)
    step = 0
    for n, index in enumerate(items):
        if whole is not None and n % DRIFT_EVERY == 0:
            if progress:
                progress(step, total, f"drift reference {DRIFT_REFERENCE[0]}")
            timed.reference.append((n, _checked(whole(drift_spec), "the drift reference")))
            step += 1
        item = plan[index]
        label = item.describe() if isinstance(item, PartShape) else f"network {item.name}"
        if progress:
            progress(step, total, label)
        seconds = measure(item) if isinstance(item, PartShape) else whole(item.spec)
        timed.seconds[index] = _checked(seconds, label)
        timed.position[index] = n
        step += 1
    if whole is not None:
        if progress:
            progress(step, total, f"drift reference {DRIFT_REFERENCE[0]}")
        timed.reference.append((len(items), _checked(whole(drift_spec), "the drift reference")))
    return timed


def _check_whole(value, low: int, high: int, field: str) -> None:
    """Refuse anything but a whole number (not a bool) from `low` to `high`, naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CalibrationError(f"must be a whole number from {low} to {high}, got {value!r}", field=field)


def _checked(seconds: float, what: str) -> float:
    seconds = float(seconds)
    if not (math.isfinite(seconds) and seconds > 0):
        raise CalibrationError(f"timing {what} gave {seconds} s", field="parts")
    return seconds


def _shape_dict(part: PartShape) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(part).items() if k != "kind"}
