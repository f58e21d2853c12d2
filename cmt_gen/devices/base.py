"""What the profiler asks of a kind of device, answered once per kind.

Why a class: what differs between CPU, CUDA and MPS (how to wait for queued
work and time it, how to read a model's peak memory, what budgets keep a
default run short, which attention kernel is fastest, which low precisions
run natively) used to be `if kind == "cuda"` branches spread over a dozen
modules, so a new device meant finding them all. Each kind is now one
`Device` subclass in its own module; the profiler only asks it. The defaults
here are those of a plain device with no special support, so a subclass
states only what is different. torch is imported inside methods: the CLI's
light commands and the torch-free layers import this package.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class MatmulSizes:
    """The square matmul that measures the device's peak: start at `start`, double while one product takes
    less than `efficient_call_s`, never beyond `largest` (kernels are efficient from the start size on)."""

    start: int
    efficient_call_s: float
    largest: int


class MemoryMeter:
    """Peak memory of one model's run. Call `start()` before the model is built or placed, `peak_bytes()`
    after the run. This base measures nothing: a device without a peak counter reports it unavailable."""

    method = "unavailable"

    def start(self) -> None:
        """Take the baseline (before the model exists) and start a fresh peak."""

    def reset_peak(self) -> None:
        """Start a fresh peak, keeping the baseline (a new attempt after out-of-memory)."""

    def peak_bytes(self) -> int | None:
        return None


class Device:
    """One kind of device: the answers the profiler needs, as methods taking the resolved name ("cuda:1").

    Subclasses set the class attributes and override what their device does
    differently; the base is a device with no queue to wait for, no memory
    counter of its own, no special precision rules and the host's free RAM.
    """

    kind: str = ""  # "cpu", "cuda", "mps": the device type torch and the result records use
    label: str = ""  # how help text names it ("CUDA")
    names: tuple[str, ...] = ()  # how the user may write it, for the help text ("cuda", "cuda:N")
    # The host CPU: threads, other work on the machine and host RAM are what its timings depend on.
    host: bool = False
    # `--device auto` may pick it (accelerators are tried before the host); `auto()` says whether it is present.
    picked_by_auto: bool = False
    defaults: DeviceDefaults
    matmul_sizes: MatmulSizes
    attention_kernel: str = "sdpa"  # deploy form's attention kernel (deploy.attention_kernels.KERNELS)
    amp_dtype: str = "float16"  # what AMP autocasts to

    # ------------------------------------------------------------ naming

    def resolve(self, text: str, asked: str) -> str | None:
        """The canonical name for lower-cased `text` when it names this device (raising a CmtGenError when
        it does but the device is absent); None when `text` is not one of its names. `asked` is the
        user's own spelling, for messages."""
        return self.kind if text == self.kind else None

    def auto(self) -> str | None:
        """The name `--device auto` uses for this device when it is present here, else None. This base
        answers the kind for a device picked by auto; an accelerator overrides it to check it is there."""
        return self.kind if self.picked_by_auto else None

    def machine_name(self) -> str | None:
        """What identifies this device in a calibration, without importing torch; None when unknown."""
        return None

    def fingerprint(self, device: str) -> dict[str, Any]:
        """This device's part of a result's environment record; at least `device_name`."""
        return {"device_name": self.label or self.kind}

    # ------------------------------------------------------------ timing

    def synchronize(self, device: str) -> None:
        """Wait until the work queued on the device is done (nothing to wait for on a synchronous device)."""

    def time_calls(self, device: str, fn: Callable[[], object], n: int) -> float:
        """Seconds taken by n back-to-back calls, from an idle device to the last call's completion."""
        self.synchronize(device)
        begin = time.perf_counter()
        for _ in range(n):
            fn()
        self.synchronize(device)
        return time.perf_counter() - begin

    # ------------------------------------------------------------ memory

    def memory_meter(self, device: str) -> MemoryMeter:
        """The most honest per-model peak-memory meter this device and OS offer."""
        return MemoryMeter()

    def free_memory(self, device: str) -> int:
        """Bytes free for a run on this device (the up-front fit guard): the host's available RAM here."""
        from cmt_gen.cost.memory_guard import available_memory

        return available_memory()

    def empty_cache(self, device: str) -> None:
        """Give a caching allocator's unused blocks back (after out-of-memory, between models)."""

    # ------------------------------------------------------------ precision and run flags

    def check_precision(self, device: str, dtype_name: str, label: str, *, allow_slow: bool) -> None:
        """Raise a CmtGenError (field "precision") when this device cannot run, or would only emulate,
        arithmetic in `dtype_name` (a low precision); `label` names it for the message."""

    def uses_grad_scaler(self, dtype_name: str) -> bool:
        """Whether a training step in AMP with this compute dtype scales its loss (torch.amp.GradScaler)."""
        return False

    def run_flags(self) -> contextlib.AbstractContextManager[None]:
        """A context manager setting run-wide backend switches for the run, restored after (none here)."""
        return contextlib.nullcontext()
