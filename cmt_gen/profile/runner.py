"""`profile_model` and `run_profiles`: images/s, latency, peak memory and achieved MAC/s on this device.

Timing follows the rules that make numbers comparable: eval mode and
`inference_mode` (or a full train step), warm-up excluded, the device
synchronised (CUDA events on GPU), the median over repeats with its spread.
The device's own dense-matmul rate is measured in the same run, so the
fraction of peak a model reaches is a statement about this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cmt_gen.devices import device_for
from cmt_gen.errors import CmtGenError
from cmt_gen.profile.batch import free_device_memory, run_with_batch_decay
from cmt_gen.profile.bench import Bench, run_environment
from cmt_gen.profile.env import with_default_threads
from cmt_gen.profile.peak import MatmulPeak, measure_matmul_peak
from cmt_gen.profile.settings import ProfileRequest, ProfileSettings, resolve_settings
from cmt_gen.profile.targets import ModelTarget, target_from_module, target_from_spec
from cmt_gen.profile.timing import Clock, measure_latency, measure_throughput, median, percentile, spread

# A training step does the forward pass, then a backward pass of about twice its cost.
TRAIN_MACS_FACTOR = 3

Progress = Callable[[str], None]


@dataclass
class ProfileResult:
    """One model's measurement. Rates are per second; memory in bytes; None where not measured."""

    name: str
    kind: str
    spec_hash: str  # sha256 of the resolved content (for a spec: canonical JSON of spec_to_dict)
    source: str | None
    resolution: int
    settings: dict[str, Any]
    batch_size: int | None = None  # the batch measured (after any out-of-memory decay)
    batches_tried: list[int] = field(default_factory=list)
    images_per_s: float | None = None  # median over the kept repeats
    noisy: bool = False  # the kept repeats still spread more than settings.max_spread after extending
    repeats_dropped: int = 0  # early repeats dropped when a high spread extended the run
    load_during: float | None = None  # share of cores busy with other work while this model ran (CPU)
    images_per_s_min: float | None = None
    images_per_s_max: float | None = None
    images_per_s_repeats: list[float] = field(default_factory=list)
    calls_per_repeat: list[int] = field(default_factory=list)
    latency_batch: int | None = None  # 1 in infer mode; the training batch in train mode
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_samples: int = 0
    peak_memory_bytes: int | None = None
    memory_method: str | None = None
    weights_bytes: int | None = None
    params: int | None = None
    macs_per_image: int | None = None  # forward MACs (Table 2's "FLOPs")
    macs_source: str | None = None
    achieved_macs_per_s: float | None = None  # train mode counts 3x the forward MACs
    peak_macs_per_s: float | None = None  # this device's matmul rate in the compute dtype
    fraction_of_peak: float | None = None
    compile_seconds: float | None = None
    paper_throughput: float | None = None
    elapsed_s: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.images_per_s is not None

    @property
    def spread(self) -> float | None:
        """Half the min-max range of the kept repeats relative to their median; None for a single repeat."""
        return spread(self.images_per_s_repeats)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spread"] = self.spread
        return data


@dataclass
class ProfileRun:
    """Results of several models under one set of settings, with what they have in common."""

    settings: ProfileSettings
    results: list[ProfileResult]
    env: dict[str, Any]
    matmul_peak: MatmulPeak | None
    interrupted: bool = False
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ProfileResult]:
        return [r for r in self.results if r.error]


# ---------------------------------------------------------------- public API

def profile_model(
    spec_or_model: Any,
    request: ProfileRequest | None = None,
    *,
    resolution: int | None = None,
    overrides: Sequence[str] | dict | None = None,
    measure_peak: bool = True,
    progress: Progress | None = None,
    **choices: Any,
) -> ProfileResult:
    """Profile one network: a spec (name, path, dict, CMTSpec), a built module, or 'timm:<name>'.

    The settings are a `ProfileRequest`, or its fields as keywords (`device="cpu",
    batch_size=8`; they override the request's): `precision` fp32 | fp16 | bf16
    | amp (None: the protocol's, else fp32); `protocol` deit | swin | timm
    presets batch and precision; explicit values win. `form` deploy (CMT
    reparameterized, default) | as-built; `backend` eager | compile |
    onnxruntime (see `profile.backends`). Timing budgets left None scale to the
    device. Settings mistakes raise CmtGenError before anything runs; a failure
    while measuring propagates. A module passed in is measured in place (infer)
    or on a copy (train) and is put back on its device, dtype and mode afterwards.
    """
    settings = resolve_settings(ProfileRequest.of(request, choices, "profile_model"))
    target = make_target(spec_or_model, overrides=overrides, resolution=resolution)
    settings, _ = with_default_threads(settings)
    with run_environment(settings):
        from cmt_gen.profile.env import fingerprint

        prime_process(settings)
        peak = measure_matmul_peak(settings.device, settings.compute_dtype) if measure_peak else None
        result = measure_target(target, settings, peak=peak, progress=progress)
        result.env = fingerprint(settings.device)
    return result


def make_target(source: Any, *, overrides=None, resolution: int | None = None) -> ModelTarget:
    """Turn what the user passed into a ModelTarget; spec errors are CmtGenErrors."""
    if isinstance(source, ModelTarget):
        return source
    from cmt_gen.spec.schema import CMTSpec

    if isinstance(source, str) and source.startswith("timm:"):
        from cmt_gen.profile.peers import peer_target

        return peer_target(source, resolution=resolution)
    if isinstance(source, CMTSpec):
        if overrides:
            raise CmtGenError("overrides apply when loading a spec; pass a name, path or dict", field="overrides")
        return _with_resolution(target_from_spec(source), source, resolution)
    if hasattr(source, "parameters") and callable(source):
        return target_from_module(source, resolution=resolution)
    from cmt_gen.spec.loading import load_spec

    spec = load_spec(source, overrides)
    return _with_resolution(target_from_spec(spec, source=str(source) if not isinstance(source, dict) else None),
                            spec, resolution)


def _with_resolution(target: ModelTarget, spec, resolution: int | None) -> ModelTarget:
    if resolution is None or resolution == spec.resolution:
        return target
    from cmt_gen.spec.loading import load_spec
    from cmt_gen.spec.serialize import spec_to_dict

    return target_from_spec(load_spec(spec_to_dict(spec), {"resolution": resolution}), source=target.source)


def run_profiles(
    targets: Sequence[ModelTarget],
    settings: ProfileSettings,
    *,
    progress: Callable[[int, str], None] | None = None,
    on_result: Callable[[ProfileResult], None] | None = None,
    measure_peak: bool = True,
) -> ProfileRun:
    """Profile each target in turn; a failure is recorded in its result and the rest still run.

    Ctrl-C stops the run and returns the models already finished, marked interrupted.
    """
    from cmt_gen.profile.env import LoadMeter, busy_warning, fingerprint

    started = time.perf_counter()
    results: list[ProfileResult] = []
    interrupted = False
    peak: MatmulPeak | None = None
    threads_given = settings.threads is not None
    settings, busy = with_default_threads(settings)
    if busy is None and device_for(settings.device_type).host:
        from cmt_gen.profile.env import cpu_busy_fraction

        busy = cpu_busy_fraction()
    # No "--threads 1" advice when the user chose a thread count or the run already uses one thread.
    warnings = [w for w in (busy_warning(settings.device, threads_given or settings.threads == 1, busy),) if w]
    run_load = LoadMeter().start()
    with run_environment(settings):
        env = fingerprint(settings.device)
        try:
            if progress:
                progress(-1, "priming")
            warnings += prime_process(settings)
            if measure_peak:
                if progress:
                    progress(-1, f"matmul peak ({settings.compute_dtype})")
                peak = measure_matmul_peak(settings.device, settings.compute_dtype)
            for index, target in enumerate(targets):
                phase = (lambda text, i=index: progress(i, text)) if progress else None
                try:
                    result = measure_target(target, settings, peak=peak, progress=phase)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the others
                    result = failed_result(target, settings, exc)
                result.env = env
                results.append(result)
                if on_result:
                    on_result(result)
        except KeyboardInterrupt:
            interrupted = True
        env["load_average_end"] = _load_average()
        env["busy_before"] = busy
        env["busy_during"] = run_load.other_busy()
        noisy = [r.name for r in results if r.noisy]
        if noisy:
            warnings.append(f"{', '.join(noisy)}: images/s still spread more than {settings.max_spread:.0%} after "
                            f"up to {settings.extend_time:g} s of extra repeats (other work: "
                            f"{_percent(env['busy_during'])} of the cores during the run); marked noisy")
    return ProfileRun(settings=settings, results=results, env=env, matmul_peak=peak, interrupted=interrupted,
                      elapsed_s=time.perf_counter() - started, warnings=warnings)


# A network small enough to run in milliseconds with every CMT op kind: running it once before the
# first measured model moves one-time costs (library initialisation, kernel caches, lazy imports)
# out of that model's memory and time.
_PRIMER_SPEC = {
    "name": "primer", "resolution": 32, "stem": {"channels": 4},
    "stages": [{"channels": 8, "depth": 1, "heads": 1, "reduction": 2, "expansion": 2.0},
               {"channels": 8, "depth": 1, "heads": 1, "reduction": 1, "expansion": 2.0}],
    "head": {"fc_channels": 8}, "num_classes": 4,
}


def prime_process(settings: ProfileSettings) -> list[str]:
    """Run a throwaway tiny CMT once under the run's settings (without compiling); warnings if it failed."""
    from dataclasses import replace

    from cmt_gen.spec.loading import load_spec

    quick = replace(settings, compile=False, compile_mode=None, warmup=0, iters=1, min_time=0.0, repeats=1,
                    latency_warmup=0, latency_samples=1, latency_time=0.0, latency_max_samples=1,
                    batch_size=2, largest_batch=False)
    try:
        measure_target(target_from_spec(load_spec(_PRIMER_SPEC)), quick)
    except Exception as exc:  # noqa: BLE001 - priming is an optimisation; the models will report real failures
        return [f"priming run failed ({type(exc).__name__}: {str(exc).strip()[:120]}); the first model may "
                "carry one-time costs"]
    return []


def failure_text(exc: BaseException) -> str:
    """One line for a failed run: the exception's type and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failed_result(target: ModelTarget, settings: ProfileSettings, exc: BaseException) -> ProfileResult:
    return ProfileResult(
        name=target.name, kind=target.kind, spec_hash=target.content_hash, source=target.source,
        resolution=target.resolution, settings=settings.as_dict(), params=target.params,
        macs_per_image=target.macs, macs_source=target.macs_source, paper_throughput=target.paper_throughput,
        error=failure_text(exc),
    )


# ---------------------------------------------------------------- one model

def measure_target(target: ModelTarget, settings: ProfileSettings, *, peak: MatmulPeak | None = None,
                   progress: Progress | None = None) -> ProfileResult:
    """Build, place, warm up and time one model; the numbers of a ProfileResult."""
    from cmt_gen.profile.env import LoadMeter
    from cmt_gen.profile.memory import memory_meter, tensor_bytes

    started = time.perf_counter()
    load = LoadMeter().start()
    say = progress or (lambda _text: None)
    result = ProfileResult(
        name=target.name, kind=target.kind, spec_hash=target.content_hash, source=target.source,
        resolution=target.resolution, settings=settings.as_dict(), paper_throughput=target.paper_throughput,
    )
    say("counting MACs")
    try:
        result.macs_per_image = target.resolve_macs()
        result.macs_source = target.macs_source
    except Exception as exc:  # noqa: BLE001 - timing does not need the MAC count
        result.notes.append(f"MACs not counted: {type(exc).__name__}: {str(exc).strip()[:120]}")
    device = device_for(settings.device_type)
    meter = memory_meter(settings.device)
    result.memory_method = meter.method
    say("building")
    meter.start()
    model = target.build()
    if target.resident and settings.mode == "train":
        import copy

        model = copy.deepcopy(model)  # training steps must not change the caller's weights
    resident_bytes = tensor_bytes(model) if target.resident and settings.mode != "train" and _on_device(
        model, settings.device) else 0
    if resident_bytes and device.host:
        result.memory_method = f"{meter.method}, plus the weights already resident"
    result.params = sum(p.numel() for p in model.parameters())
    clock = Clock(settings.device)
    bench: Bench | None = None
    try:
        bench = Bench(model, target, settings)
        result.weights_bytes = tensor_bytes(bench.model)
        if settings.form == "deploy" and settings.mode == "infer" and not bench.deployed:
            result.notes.append("as built: no deploy form")

        def attempt(batch: int):
            bench.set_batch(batch)
            meter.reset_peak()
            compile_s = bench.first_call(clock) if settings.compile else None
            with bench.context():
                run = measure_throughput(bench.step, batch, clock, warmup=settings.warmup, iters=settings.iters,
                                         min_time=settings.min_time, repeats=settings.repeats,
                                         max_spread=settings.max_spread, extend_time=settings.extend_time,
                                         progress=say)
            return run, compile_s

        outcome = run_with_batch_decay(
            attempt, settings.batch_size, cleanup=lambda: free_device_memory(settings.device),
            on_decay=lambda old, new: say(f"out of memory at batch {old}, trying {new}"),
        )
        run, compile_s = outcome.value
        result.batch_size, result.batches_tried = outcome.batch, outcome.tried
        if outcome.decayed:
            result.notes.append(f"batch decayed on out-of-memory: {' -> '.join(map(str, outcome.tried))}")
        measured = meter.peak_bytes()
        result.peak_memory_bytes = None if measured is None else measured + resident_bytes
        rates = run.window
        result.images_per_s_repeats = rates
        result.calls_per_repeat = run.calls[len(run.calls) - len(rates):]
        result.images_per_s = median(rates)
        result.images_per_s_min, result.images_per_s_max = min(rates), max(rates)
        result.noisy, result.repeats_dropped = run.noisy, run.dropped
        if run.dropped:
            result.notes.append(f"last {len(rates)} of {len(run.rates)} repeats kept")

        say("latency")
        latency_batch = 1 if settings.mode == "infer" else outcome.batch
        bench.set_batch(latency_batch)
        if settings.compile:
            compile_s = (compile_s or 0.0) + bench.first_call(clock)
        with bench.context():
            samples = measure_latency(bench.step, clock, warmup=settings.latency_warmup,
                                      samples=settings.latency_samples, min_time=settings.latency_time,
                                      max_samples=settings.latency_max_samples, progress=say)
        result.latency_batch = latency_batch
        result.latency_samples = len(samples)
        result.latency_p50_ms = percentile(samples, 50) * 1000
        result.latency_p90_ms = percentile(samples, 90) * 1000
        result.compile_seconds = compile_s if compile_s is not None else bench.prepare_seconds
    finally:
        if bench is not None:
            bench.close()
        model = None  # the last reference: the next model's meter collects what is left
        if not device.host:  # an accelerator's allocator cache; the host's RAM is the next meter's to free
            free_device_memory(settings.device)

    if result.macs_per_image:
        factor = TRAIN_MACS_FACTOR if settings.mode == "train" else 1
        result.achieved_macs_per_s = result.macs_per_image * factor * result.images_per_s
        if peak is not None and peak.macs_per_s > 0:
            result.peak_macs_per_s = peak.macs_per_s
            result.fraction_of_peak = result.achieved_macs_per_s / peak.macs_per_s
            if result.fraction_of_peak > 1.05:
                result.notes.append("above the measured matmul peak: other load slowed the peak's measurement")
    if settings.largest_batch:
        result.notes.append(f"largest batch that fit: {result.batch_size}")
    if device.host:
        result.load_during = load.other_busy()
        if result.load_during is not None and result.load_during >= 0.25:
            result.notes.append(f"other work: {result.load_during:.0%} of cores")
    result.elapsed_s = time.perf_counter() - started
    return result


def _percent(value: float | None) -> str:
    return "unknown" if value is None else f"{value * 100:.0f}%"


def _on_device(model, device: str) -> bool:
    import torch

    parameter = next(model.parameters(), None)
    return parameter is not None and parameter.device == torch.device(device)


def _load_average() -> list[float] | None:
    from cmt_gen.profile.env import load_average

    return load_average()
