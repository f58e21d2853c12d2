"""One answer to "is this forward being recorded instead of run?", on every supported torch.

Eager-only work (shape checks, cached biases, oneDNN calls, image chunks)
steps aside while a tracer, scripter, exporter or compiler records the
forward. The probes differ between torch releases: `torch.compiler.is_compiling`
arrived in 2.3 (`torch._dynamo.is_compiling` before), `torch.compiler.is_exporting`
in 2.6 (before it, `torch.export` records through dynamo, so `is_compiling()`
answers for it), FX's `is_fx_symbolic_tracing` in 2.2 (`is_fx_tracing` before).
Each probe is resolved once, here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _never() -> bool:
    return False


def _first_probe(*candidates: tuple[object, str]) -> Callable[[], bool]:
    for owner, name in candidates:
        probe = getattr(owner, name, None)
        if callable(probe):
            return probe
    return _never


def _compiling_probe() -> Callable[[], bool]:
    """torch.compiler's probe; torch._dynamo's only where that is missing (importing dynamo costs
    about a second, so it is not done on torch releases that do not need it)."""
    probe = _first_probe((getattr(torch, "compiler", None), "is_compiling"))
    if probe is not _never:
        return probe
    try:
        import torch._dynamo as dynamo
    except ImportError:  # a build without dynamo
        return _never
    return _first_probe((dynamo, "is_compiling"))


_compiler = getattr(torch, "compiler", None)
is_compiling = _compiling_probe()
is_exporting = _first_probe((_compiler, "is_exporting"))
_fx_module = getattr(torch.fx, "_symbolic_trace", None)
_fx_tracing = _first_probe((_fx_module, "is_fx_symbolic_tracing"), (_fx_module, "is_fx_tracing"))  # the latter < 2.2


@torch.jit.unused
def onnx_export() -> bool:
    """True while `torch.onnx.export` (TorchScript-based or dynamo) records the forward."""
    return torch.onnx.is_in_onnx_export()


@torch.jit.unused
def graph_capture() -> bool:
    """True while jit.trace, torch.compile, torch.export or an ONNX export records the forward."""
    return torch.jit.is_tracing() or is_compiling() or is_exporting() or onnx_export()


def recording() -> bool:
    """`graph_capture()` or FX's symbolic tracing: sizes are symbols, so shape checks step aside."""
    return torch.jit.is_tracing() or _fx_tracing() or is_compiling() or is_exporting()


@torch.jit.unused
def inductor_on_cpu(x: torch.Tensor) -> bool:
    """True while torch.compile (not torch.export, not ONNX, not jit.trace) records a CPU forward.

    Before torch 2.6 an export also reads as compiling here; the graph it records
    is then the compile-time variant, which computes the same values.
    """
    return x.device.type == "cpu" and is_compiling() and not is_exporting() \
        and not onnx_export() and not torch.jit.is_tracing()


def _cpu_autocast_probe() -> Callable[[], bool]:
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument, a function of its own
        return torch.is_autocast_cpu_enabled
    return lambda: torch.is_autocast_enabled("cpu")


cpu_autocast_enabled = _cpu_autocast_probe()
"""Whether CPU autocast is on."""
