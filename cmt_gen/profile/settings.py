"""Profiling settings: device, precision, protocol presets and per-device defaults, checked up front.

Every mistake here (unknown device, CUDA asked for but absent, a precision the
device cannot run) is a `CmtGenError` raised before any model is built, so a
long run never dies half way on a typo. torch is imported inside functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from cmt_gen.errors import CmtGenError

PRECISIONS = ("fp32", "fp16", "bf16", "amp")
MODES = ("infer", "train")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Protocol:
    """How a paper measured throughput; fields left None keep the device's defaults."""

    name: str
    batch_size: int | None
    precision: str
    largest_batch: bool  # start high and keep the largest batch that fits
    description: str


# A throughput whose repeats spread more than this (half the min-max range over the median) is not yet
# trusted: the run adds repeats, up to `extend_time` more seconds, and keeps the last `repeats` of them; if
# they still spread more, the row is marked noisy instead of printing a confident median.
NOISY_SPREAD = 0.05

# Largest batch tried first by the `deit` protocol; the OOM ladder walks down from here.
LARGEST_BATCH_START = 1024

PROTOCOLS: dict[str, Protocol] = {
    "deit": Protocol("deit", None, "fp32", True,
                     f"largest batch that fits (from {LARGEST_BATCH_START} down the OOM ladder), fp32 (DeiT)"),
    "swin": Protocol("swin", 64, "fp32", False, "batch 64, fp32 (Swin)"),
    "timm": Protocol("timm", 256, "amp", False, "batch 256, AMP, batch decays on out-of-memory (timm benchmark.py)"),
}


@dataclass(frozen=True)
class DeviceDefaults:
    """Budgets that keep a default run short on this kind of device while still warm and repeated.

    On CPU a timed repeat is at least one batch and two seconds, and latency takes
    at least ten batch-1 calls and two seconds; a noisy model may add as many
    seconds of repeats again (`extend_time`). `--min-time` buys precision. The
    README states the measured time of a default run of the whole family.
    """

    batch_size: int
    warmup: int
    iters: int
    min_time: float
    repeats: int
    latency_warmup: int
    latency_samples: int  # at least this many batch-1 calls...
    latency_time: float  # ...and at least this many seconds of them (--min-time sets it too)
    latency_max_samples: int


DEVICE_DEFAULTS = {
    "cpu": DeviceDefaults(batch_size=8, warmup=1, iters=1, min_time=2.0, repeats=5,
                          latency_warmup=1, latency_samples=10, latency_time=2.0, latency_max_samples=200),
    "cuda": DeviceDefaults(batch_size=64, warmup=10, iters=10, min_time=1.0, repeats=5,
                           latency_warmup=5, latency_samples=20, latency_time=0.5, latency_max_samples=500),
    "mps": DeviceDefaults(batch_size=32, warmup=5, iters=5, min_time=1.0, repeats=5,
                          latency_warmup=3, latency_samples=20, latency_time=0.5, latency_max_samples=500),
}


@dataclass(frozen=True)
class ProfileSettings:
    """Everything a measurement depends on, resolved: what a result record says it used."""

    device: str  # "cpu", "cuda:0", "mps"
    device_type: str
    batch_size: int
    largest_batch: bool
    precision: str
    compute_dtype: str  # dtype the arithmetic runs in (amp: the autocast dtype)
    channels_last: bool
    compile: bool
    compile_mode: str | None
    mode: str
    warmup: int
    iters: int
    min_time: float
    repeats: int
    threads: int | None
    protocol: str | None
    latency_warmup: int
    latency_samples: int
    latency_time: float
    latency_max_samples: int
    max_spread: float = NOISY_SPREAD
    extend_time: float = 0.0  # extra seconds of repeats allowed while the spread is above max_spread
    threads_note: str | None = None  # how a default thread count was chosen (None: the user chose)
    form: str = "deploy"  # deploy | as-built (profile.backends)
    backend: str = "eager"  # eager | compile | onnxruntime
    allocator: str = "system"  # system | retain (host_allocator; auto resolved)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_batch(self, batch_size: int) -> ProfileSettings:
        return replace(self, batch_size=batch_size)


def resolve_settings(
    *,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str | None = None,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
    mode: str = "infer",
    warmup: int | None = None,
    iters: int | None = None,
    min_time: float | None = None,
    repeats: int | None = None,
    threads: int | None = None,
    protocol: str | None = None,
    allow_slow_precision: bool = False,
    form: str = "deploy",
    backend: str | None = None,
    allocator: str = "auto",
) -> ProfileSettings:
    """Check and complete the user's choices; protocol first, explicit values win over it."""
    mode = _choice(mode, MODES, "mode")
    preset = None
    if protocol is not None:
        preset = PROTOCOLS.get(str(protocol).lower())
        if preset is None:
            raise CmtGenError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}", field="protocol")
    if precision is None:
        precision = preset.precision if preset else "fp32"
    precision = _choice(precision, PRECISIONS, "precision")
    _positive(batch_size, "batch_size", MAX_COUNTS["batch_size"])
    _positive(repeats, "repeats", MAX_COUNTS["repeats"])
    _positive(threads, "threads")
    _non_negative(warmup, "warmup", MAX_COUNTS["warmup"])
    _positive(iters, "iters", MAX_COUNTS["iters"])
    if min_time is not None and (not math.isfinite(min_time) or not 0 <= min_time <= MAX_MIN_TIME):
        raise CmtGenError(f"must be a number of seconds from 0 to {MAX_MIN_TIME:g}, got {min_time}", field="min_time")
    if compile_mode is not None:
        compile = True
        _check_compile_mode(compile_mode)
    from cmt_gen.profile.backends import BACKENDS, FORMS

    form = _choice(form, FORMS, "form")
    backend = _choice(backend, BACKENDS, "backend") if backend is not None else ("compile" if compile else "eager")
    if compile and backend != "compile":
        raise CmtGenError(f"--compile asks for the compile backend, not {backend}", field="backend")
    compile = backend == "compile"

    dev = resolve_device(device)
    kind = dev.split(":")[0]
    defaults = DEVICE_DEFAULTS[kind]
    largest = bool(preset and preset.largest_batch and batch_size is None)
    if largest and kind == "cpu":
        raise CmtGenError("the deit protocol searches for the largest batch that fits accelerator memory; "
                          "on cpu that would exhaust RAM: pass --batch-size", field="protocol")
    if batch_size is None:
        batch_size = LARGEST_BATCH_START if largest else (preset.batch_size if preset and preset.batch_size
                                                          else defaults.batch_size)
    if backend == "onnxruntime" and (kind != "cpu" or mode != "infer" or precision != "fp32"):
        raise CmtGenError("the onnxruntime backend runs fp32 inference on cpu (its CPU provider); "
                          f"got {dev}, {mode}, {precision}", field="backend")
    compute = check_precision(dev, precision, allow_slow=allow_slow_precision)
    from cmt_gen.profile.host_allocator import resolve_policy

    allocator = resolve_policy(allocator, kind)
    if threads is not None:
        _check_threads(threads)
    return ProfileSettings(
        device=dev, device_type=kind, batch_size=batch_size, largest_batch=largest, precision=precision,
        compute_dtype=compute, channels_last=channels_last, compile=compile, compile_mode=compile_mode,
        mode=mode, warmup=defaults.warmup if warmup is None else warmup,
        iters=defaults.iters if iters is None else iters,
        min_time=defaults.min_time if min_time is None else float(min_time),
        repeats=defaults.repeats if repeats is None else repeats, threads=threads,
        protocol=preset.name if preset else None, latency_warmup=defaults.latency_warmup,
        latency_samples=defaults.latency_samples,
        latency_time=defaults.latency_time if min_time is None else float(min_time),
        latency_max_samples=defaults.latency_max_samples, form=form, backend=backend, allocator=allocator,
        extend_time=(defaults.repeats if repeats is None else repeats)
        * (defaults.min_time if min_time is None else float(min_time)),
    )


# ---------------------------------------------------------------- device

def resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' when CUDA is present, else 'cpu'; checks that the device exists."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CmtGenError("mps asked for but not available (needs Apple silicon and a torch built with MPS)",
                              field="device")
        return "mps"
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise CmtGenError(f"unknown device {device!r}; use {DEVICE_HELP}", field="device")
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
            raise CmtGenError(f"{device} asked for but CUDA is not available (torch {torch.__version__}, "
                              f"{build} build); use --device cpu or auto", field="device")
        count = torch.cuda.device_count()
        index = int(index_text) if index_text else torch.cuda.current_device()
        if index >= count:
            raise CmtGenError(f"{device} asked for but there {'is' if count == 1 else 'are'} only {count} "
                              f"CUDA device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})", field="device")
        return f"cuda:{index}"
    raise CmtGenError(f"unknown device {device!r}; use {DEVICE_HELP}", field="device")


# ---------------------------------------------------------------- precision

def compute_dtype_name(device_type: str, precision: str) -> str:
    """The dtype the arithmetic runs in; AMP autocasts to fp16 on GPUs and to bf16 on CPU."""
    if precision == "amp":
        return "bfloat16" if device_type == "cpu" else "float16"
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]


def native_cpu_support(dtype_name: str) -> bool | None:
    """Whether the CPU has native kernels for a low precision (AVX512-BF16/FP16, AMX); None if unknown."""
    import torch

    probe = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}.get(dtype_name)
    if probe is None:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return None


def check_precision(device: str, precision: str, *, allow_slow: bool = False) -> str:
    """Refuse a precision the device cannot run (or would only emulate); returns the compute dtype name."""
    import torch

    kind = device.split(":")[0]
    dtype_name = compute_dtype_name(kind, precision)
    if dtype_name == "float32":
        return dtype_name
    label = precision if precision != "amp" else f"amp ({dtype_name} autocast)"
    if kind == "cuda" and dtype_name == "bfloat16":
        try:
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            supported = torch.cuda.is_bf16_supported()
        if not supported:
            name = torch.cuda.get_device_name(torch.device(device))
            raise CmtGenError(f"{label} is not supported on {device} ({name}); use fp32, fp16 or amp",
                              field="precision")
    if kind == "cpu" and not allow_slow and native_cpu_support(dtype_name) is False:
        capability = _cpu_capability()
        raise CmtGenError(
            f"{label} on cpu: this CPU ({capability}) has no native {dtype_name} kernels, so it would be "
            "emulated and run tens of times slower than fp32; use --precision fp32, or "
            "--allow-slow-precision to measure the emulation anyway",
            field="precision",
        )
    problem = _probe_ops(device, kind, precision, dtype_name)
    if problem:
        raise CmtGenError(f"{label} cannot run on {device}: {problem}", field="precision")
    return dtype_name


def _probe_ops(device: str, kind: str, precision: str, dtype_name: str) -> str | None:
    """Run each op kind a CMT uses once, tiny, in the precision; the first failure's message or None."""
    import contextlib

    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    data_dtype = torch.float32 if precision == "amp" else dtype
    ctx = torch.autocast(kind, dtype=dtype) if precision == "amp" else contextlib.nullcontext()
    try:
        with torch.no_grad(), ctx:
            x = torch.randn(2, 4, 8, 8, device=device, dtype=data_dtype)
            y = F.conv2d(x, torch.randn(4, 1, 3, 3, device=device, dtype=data_dtype), padding=1, groups=4)
            y = F.batch_norm(F.gelu(y), torch.zeros(4, device=device, dtype=data_dtype),
                             torch.ones(4, device=device, dtype=data_dtype))
            t = F.layer_norm(y.flatten(2).transpose(1, 2), (4,))
            t = F.linear(t, torch.randn(4, 4, device=device, dtype=data_dtype))
            q = t.reshape(2, 1, 64, 4)
            F.scaled_dot_product_attention(q, q, q).sum().item()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _cpu_capability() -> str:
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return "unknown capability"


# ---------------------------------------------------------------- small checks

def _choice(value: str, allowed: tuple[str, ...], field: str) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise CmtGenError(f"unknown {field} {value!r}; use one of {', '.join(allowed)}", field=field)
    return text


# Upper bounds of the counts a user types: far beyond any useful run, short of one that never ends.
MAX_COUNTS = {"batch_size": 65536, "repeats": 1000, "warmup": 10_000, "iters": 100_000}
MAX_MIN_TIME = 3600.0


def _positive(value: int | None, field: str, most: int | None = None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise CmtGenError(f"must be a whole number >= 1, got {value!r}", field=field)
    if value is not None and most is not None and value > most:
        raise CmtGenError(f"must be a whole number from 1 to {most}, got {_short(value)}", field=field)


def _non_negative(value: int | None, field: str, most: int | None = None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise CmtGenError(f"must be a whole number >= 0, got {value!r}", field=field)
    if value is not None and most is not None and value > most:
        raise CmtGenError(f"must be a whole number from 0 to {most}, got {_short(value)}", field=field)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"


def _check_threads(threads: int) -> None:
    import os

    cores = os.cpu_count() or 1
    if threads > 4 * cores:
        raise CmtGenError(f"{threads} threads on {cores} cores would only measure contention", field="threads")


def _check_compile_mode(mode: str) -> None:
    try:
        import torch._inductor

        known = list(torch._inductor.list_mode_options())
    except (ImportError, AttributeError):
        return
    if mode not in known and mode != "default":
        raise CmtGenError(f"unknown compile mode {mode!r}; use one of {', '.join(['default', *known])}",
                          field="compile_mode")
