"""Linear and convolution with a fused activation, through oneDNN on CPU when it is safe to.

Measured on the 2-core AMD EPYC this project runs on (torch 2.14, MKL BLAS,
oneDNN 3.12; `benchmarks/bench_inference.py --kernels`): a (3136 x 256) @ (256 x 1024)
linear with GELU takes 2.2x longer through `F.linear` (MKL sgemm) and `F.gelu`
(8.6 ms) than through oneDNN (4.0 ms): oneDNN's GEMM is faster on this AMD CPU,
its weight is pre-packed, and it applies GELU / Swish while the output is still
in cache, which saves a full pass over the largest activations. oneDNN's GELU is
the exact erf form.

The fast path is used only for CPU tensors in eager mode. Anything that traces
the graph (TorchScript, `torch.export`, ONNX export, `torch.compile`, which does
its own oneDNN fusion) sees the portable `F.linear` / `F.conv2d` + activation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "gelu", "swish")
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.jit.unused
def onnx_export() -> bool:
    return torch.onnx.is_in_onnx_export()


@torch.jit.unused
def graph_capture() -> bool:
    """True while a tracer or compiler is recording the forward instead of running it."""
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or onnx_export())


@torch.jit.unused
def onednn_usable(x: torch.Tensor) -> bool:
    # The fused oneDNN ops have no autograd formula: with grad enabled the portable ops run instead.
    return _HAVE_ONEDNN and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) \
        and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not graph_capture()


def activate(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "gelu":
        return F.gelu(x)
    if act == "swish":
        return F.silu(x)
    return x


@torch.jit.unused
def inductor_on_cpu(x: torch.Tensor) -> bool:
    """True while torch.compile (not torch.export, not ONNX) records a CPU forward."""
    return x.device.type == "cpu" and torch.compiler.is_compiling() and not torch.compiler.is_exporting() \
        and not onnx_export() and not torch.jit.is_tracing()


# id(weight) -> (weak reference to the weight, what its values are, {input key: packed weight});
# see `_cached_pack`.
_PACKED: dict[int, tuple[weakref.ref, tuple, dict[object, torch.Tensor]]] = {}
INPUT_KEYS_KEPT = 2  # packs per weight: the throughput batch and batch 1, say


@torch.jit.unused
def _cached_pack(weight: torch.Tensor, input_key: object, pack: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`pack()` (the weight in oneDNN's blocked layout for inputs like `input_key`), made once, reused.

    The pack is keyed by the weight object, its version counter and its storage,
    dtype and device, so an in-place update (`load_state_dict`, `copy_`), new
    data behind the same parameter (`model.to(torch.bfloat16)`, `.data = ...`)
    or a new weight repacks, and it is dropped with the weight. It costs one
    more copy of the weight per input key kept. A weight created under
    inference_mode has no version counter, so it is used unpacked.
    """
    if weight.is_inference():  # made under inference_mode: no version counter to notice an update by
        return weight
    key = id(weight)
    state = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
    entry = _PACKED.get(key)
    if entry is None or entry[0]() is not weight or entry[1] != state:
        entry = (weakref.ref(weight), state, {})
        if key not in _PACKED:
            weakref.finalize(weight, _PACKED.pop, key, None)
        _PACKED[key] = entry
    packs = entry[2]
    if input_key not in packs:
        if len(packs) >= INPUT_KEYS_KEPT:
            packs.pop(next(iter(packs)))
        packs[input_key] = pack()
    return packs[input_key]


@torch.jit.unused
def packed_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A linear's weight packed for `rows` input rows.

    Unpacked, oneDNN reorders the weight on every call: 3-20% of a linear's time
    here, most at batch 1 (measured: CMT-S deploy form 7-9% faster per forward).
    """
    return _cached_pack(weight, rows, lambda: torch.ops.mkldnn._reorder_linear_weight(weight, rows))


@torch.jit.unused
def packed_conv_weight(weight: torch.Tensor, x: torch.Tensor, padding: int, stride: int,
                       groups: int) -> torch.Tensor:
    """A convolution's weight packed for inputs shaped like `x` (oneDNN still runs other shapes
    with it, reordering as needed). Saves 6-9 us a call, which is 15-25% of a batch-1 depthwise
    conv (`benchmarks/bench_inference.py`, batch-1 rows)."""
    shape = tuple(x.shape)
    return _cached_pack(weight, shape, lambda: torch.ops.mkldnn._reorder_convolution_weight(
        weight, [padding, padding], [stride, stride], [1, 1], groups, list(shape)))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none",
           use_onednn: bool = True) -> torch.Tensor:
    """act(x @ weight^T + bias) over the last dimension of `x`."""
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript drops this block only when it stands alone)
        if use_onednn and onednn_usable(x) and x.is_contiguous():
            packed = packed_weight(weight, x.numel() // x.shape[-1])
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, act, [], "none" if act == "gelu" else "")
        if use_onednn and x.dim() == 3 and inductor_on_cpu(x):
            return token_linear_as_conv(x, weight, bias, act)
    return activate(F.linear(x, weight, bias), act)


def token_linear_as_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         act: str) -> torch.Tensor:
    """The same linear as a 1x1 convolution over a channels-last view of the (B, N, C) tokens.

    Inductor lowers an fp32 linear with static shapes to MKL's packed sgemm, which
    on AMD CPUs runs at about half of oneDNN's speed; a 1x1 convolution it lowers
    to oneDNN with pre-packed weights and the activation fused.
    """
    b, n, c = x.shape
    y = F.conv2d(x.reshape(b, n, 1, c).permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    return activate(y, act).permute(0, 2, 3, 1).reshape(b, n, -1)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, stride: int,
           groups: int, act: str = "none", use_onednn: bool = True) -> torch.Tensor:
    """act(conv2d(x)); keeps a channels-last input channels-last."""
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript drops this block only when it stands alone)
        if use_onednn and onednn_usable(x):
            packed = packed_conv_weight(weight, x, padding, stride, groups)
            return torch.ops.mkldnn._convolution_pointwise(
                x, packed, bias, [padding, padding], [stride, stride], [1, 1], groups, act, [],
                "none" if act == "gelu" else "")
    return activate(F.conv2d(x, weight, bias, stride, padding, 1, groups), act)
