"""Profiling settings: device, precision, protocol presets and per-device defaults, checked up front.

The user's choices arrive as one `ProfileRequest`; `resolve_settings` turns
them into the `ProfileSettings` a measurement records. Every mistake here
(unknown device, CUDA asked for but absent, a precision the device cannot run)
is a `CmtGenError` raised before any model is built, so a long run never dies
half way on a typo. What differs per device is asked of `cmt_gen.devices`.
torch is imported inside functions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cmt_gen.devices import DEVICE_HELP, KINDS, device_for
from cmt_gen.devices import resolve as _resolve_device
from cmt_gen.devices.base import DeviceDefaults
from cmt_gen.errors import CmtGenError

PRECISIONS = ("fp32", "fp16", "bf16", "amp")
MODES = ("infer", "train")
__all__ = ["DEVICE_DEFAULTS", "DEVICE_HELP", "MODES", "PRECISIONS", "PROTOCOLS", "DeviceDefaults", "ProfileRequest",
           "ProfileSettings", "Protocol", "check_precision", "compute_dtype_name", "native_cpu_support",
           "resolve_device", "resolve_settings"]


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


# Each device's budgets (`Device.defaults`) by kind, in one table a quick run or a test can swap an entry of.
DEVICE_DEFAULTS: dict[str, DeviceDefaults] = {kind: device_for(kind).defaults for kind in KINDS}


@dataclass(frozen=True)
class ProfileRequest:
    """The user's profiling choices as given; None leaves a value to the protocol, then to the device.

    One object instead of the same keywords on every function between the CLI
    and the runner; `resolve_settings` checks and completes it.
    """

    device: str = "auto"
    batch_size: int | None = None
    precision: str | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    mode: str = "infer"
    warmup: int | None = None
    iters: int | None = None
    min_time: float | None = None
    repeats: int | None = None
    threads: int | None = None
    protocol: str | None = None
    allow_slow_precision: bool = False
    form: str | None = None  # None: deploy for inference, as-built for training (the form it measures)
    backend: str | None = None
    allocator: str = "auto"

    @classmethod
    def of(cls, request: ProfileRequest | None, choices: dict[str, Any], caller: str) -> ProfileRequest:
        """`request` (default: all defaults) with keyword `choices` on top, for functions that take both;
        an unknown keyword is the TypeError Python gives for a misspelt argument, naming `caller`."""
        if request is not None and not isinstance(request, cls):
            raise TypeError(f"{caller}() request must be a ProfileRequest, not {type(request).__name__}")
        known = {f.name for f in fields(cls)}
        for name in choices:
            if name not in known:
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
        return replace(request or cls(), **choices)


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


def resolve_settings(request: ProfileRequest | None = None, /, **choices: Any) -> ProfileSettings:
    """Check and complete the user's choices; protocol first, explicit values win over it.

    Pass a ProfileRequest, or its fields as keywords (they override the request's).
    """
    r = ProfileRequest.of(request, choices, "resolve_settings")
    mode = _choice(r.mode, MODES, "mode")
    preset = None
    if r.protocol is not None:
        preset = PROTOCOLS.get(str(r.protocol).lower())
        if preset is None:
            raise CmtGenError(f"unknown protocol {r.protocol!r}; use one of {', '.join(PROTOCOLS)}",
                              field="protocol")
    precision = r.precision if r.precision is not None else (preset.precision if preset else "fp32")
    precision = _choice(precision, PRECISIONS, "precision")
    _check_counts(r)
    compile = r.compile or r.compile_mode is not None
    if r.compile_mode is not None:
        _check_compile_mode(r.compile_mode)
    from cmt_gen.profile.backends import BACKENDS, FORMS

    form = _choice(r.form, FORMS, "form") if r.form is not None else ("deploy" if mode == "infer" else "as-built")
    if mode == "train" and form == "deploy":
        raise CmtGenError("the deploy form is for inference (its norms are folded, its weights frozen); "
                          "--mode train measures the as-built form", field="form")
    backend = _choice(r.backend, BACKENDS, "backend") if r.backend is not None else \
        ("compile" if compile else "eager")
    if compile and backend != "compile":
        raise CmtGenError(f"--compile asks for the compile backend, not {backend}", field="backend")

    dev = resolve_device(r.device)
    kind = dev.split(":")[0]
    device = device_for(kind)
    defaults = DEVICE_DEFAULTS[kind]
    largest = bool(preset and preset.largest_batch and r.batch_size is None)
    if largest and device.host:
        raise CmtGenError("the deit protocol searches for the largest batch that fits accelerator memory; "
                          f"on {kind} that would exhaust RAM: pass --batch-size", field="protocol")
    batch_size = r.batch_size
    if batch_size is None:
        batch_size = LARGEST_BATCH_START if largest else (preset.batch_size if preset and preset.batch_size
                                                          else defaults.batch_size)
    if backend == "onnxruntime" and (not device.host or mode != "infer" or precision != "fp32"):
        raise CmtGenError("the onnxruntime backend runs fp32 inference on cpu (its CPU provider); "
                          f"got {dev}, {mode}, {precision}", field="backend")
    compute = check_precision(dev, precision, allow_slow=r.allow_slow_precision)
    from cmt_gen.profile.host_allocator import resolve_policy

    allocator = resolve_policy(r.allocator, kind)
    if r.threads is not None:
        check_threads(r.threads)
    min_time = defaults.min_time if r.min_time is None else float(r.min_time)
    repeats = defaults.repeats if r.repeats is None else r.repeats
    return ProfileSettings(
        device=dev, device_type=kind, batch_size=batch_size, largest_batch=largest, precision=precision,
        compute_dtype=compute, channels_last=r.channels_last, compile=backend == "compile",
        compile_mode=r.compile_mode, mode=mode, warmup=defaults.warmup if r.warmup is None else r.warmup,
        iters=defaults.iters if r.iters is None else r.iters, min_time=min_time, repeats=repeats,
        threads=r.threads, protocol=preset.name if preset else None, latency_warmup=defaults.latency_warmup,
        latency_samples=defaults.latency_samples,
        latency_time=defaults.latency_time if r.min_time is None else float(r.min_time),
        latency_max_samples=defaults.latency_max_samples, form=form, backend=backend, allocator=allocator,
        extend_time=repeats * min_time,
    )


def _check_counts(r: ProfileRequest) -> None:
    """Each count and duration a user types: whole, in range, finite."""
    _positive(r.batch_size, "batch_size", MAX_COUNTS["batch_size"])
    _positive(r.repeats, "repeats", MAX_COUNTS["repeats"])
    _positive(r.threads, "threads")
    _non_negative(r.warmup, "warmup", MAX_COUNTS["warmup"])
    _positive(r.iters, "iters", MAX_COUNTS["iters"])
    if r.min_time is not None and (not math.isfinite(r.min_time) or not 0 <= r.min_time <= MAX_MIN_TIME):
        raise CmtGenError(f"must be a number of seconds from 0 to {MAX_MIN_TIME:g}, got {r.min_time}",
                          field="min_time")


# ---------------------------------------------------------------- device

def resolve_device(device: str) -> str:
    """'auto' -> 'cuda:0' when CUDA is present, else 'cpu'; checks that the device exists (`devices.resolve`)."""
    return _resolve_device(device)


# ---------------------------------------------------------------- precision

def compute_dtype_name(device_type: str, precision: str) -> str:
    """The dtype the arithmetic runs in; AMP autocasts to the device's `amp_dtype` (fp16 on GPUs, bf16 on CPU)."""
    if precision == "amp":
        return device_for(device_type).amp_dtype
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]


def native_cpu_support(dtype_name: str) -> bool | None:
    """Whether the CPU has native kernels for a low precision (AVX512-BF16/FP16, AMX); None if unknown."""
    return device_for("cpu").native_support(dtype_name)


def check_precision(device: str, precision: str, *, allow_slow: bool = False) -> str:
    """Refuse a precision the device cannot run (or would only emulate); returns the compute dtype name.

    The device's own rules first (`Device.check_precision`), then each op kind a CMT uses, run once.
    """
    kind = device.split(":")[0]
    dtype_name = compute_dtype_name(kind, precision)
    if dtype_name == "float32":
        return dtype_name
    label = precision if precision != "amp" else f"amp ({dtype_name} autocast)"
    device_for(kind).check_precision(device, dtype_name, label, allow_slow=allow_slow)
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


def check_threads(threads: int, field: str = "threads") -> None:
    """A thread count any command accepts: at least 1, at most 4 per core (beyond, threads only contend)."""
    import os

    _positive(threads, field)
    cores = os.cpu_count() or 1
    if threads > 4 * cores:
        raise CmtGenError(f"{threads} threads on {cores} cores would only measure contention "
                          f"(at most {4 * cores})", field=field)


def _check_compile_mode(mode: str) -> None:
    try:
        import torch._inductor

        known = list(torch._inductor.list_mode_options())
    except (ImportError, AttributeError):
        return
    if mode not in known and mode != "default":
        raise CmtGenError(f"unknown compile mode {mode!r}; use one of {', '.join(['default', *known])}",
                          field="compile_mode")
