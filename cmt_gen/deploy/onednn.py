"""Linear and convolution with a fused activation, through oneDNN on CPU when it is safe to.

oneDNN's GEMM and convolutions take pre-packed weights and apply GELU / Swish
while the output is still in cache, which saves a full pass over the largest
activations (what that is worth on a given CPU: `benchmarks/bench_inference.py
--kernels`). The fast path is used only for CPU tensors in eager mode, without
autograd or autocast. TorchScript, `torch.export` and ONNX export see the
portable `F.linear` / `F.conv2d` + activation; `torch.compile` on CPU sees the
token linears as 1x1 convolutions (`token_linear_as_conv`), which inductor
lowers to its own fused oneDNN kernels.

The ops are private to torch (`torch.ops.mkldnn.*`), so they are trusted only
after they have shown it: the first use per process, dtype, activation and
layout runs the op on a tiny input against the portable op (`self_check`). An
exception (a CPU without bf16 support: AVX2-only parts, for example), or a
result off by more than the dtype's rounding, switches that case to the
portable op for the rest of the process, with one warning per op and dtype.
A call that raises later does the same.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cmt_gen.deploy.value_probe import value_probe
from cmt_gen.ops import capture

ACTIVATIONS = ("none", "gelu", "gelu_tanh", "swish")
# Each activation as oneDNN's post-op name and algorithm argument (GELU: erf or tanh).
_POST_OPS = {"none": ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "swish": ("swish", "")}
PRIVATE_OPS = ("_linear_pointwise", "_convolution_pointwise", "_reorder_linear_weight", "_reorder_convolution_weight")
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, op) for op in PRIVATE_OPS)
# Largest relative gap (to the output's largest magnitude) a self-check accepts: the dtype's rounding.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2}
_DTYPES = tuple(SELF_CHECK_TOLERANCE)  # the dtypes the fast path runs (a tuple: torch.compile traces the test)


@torch.jit.unused
def onednn_usable(x: torch.Tensor) -> bool:
    # The fused oneDNN ops have no autograd formula: with grad enabled the portable ops run instead.
    return _HAVE_ONEDNN and x.device.type == "cpu" and x.dtype in _DTYPES \
        and not torch.is_grad_enabled() and not capture.cpu_autocast_enabled() and not capture.graph_capture()


def activate(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "swish":
        return F.silu(x)
    return x


# ---------------------------------------------------------------- the private ops, one call site each

def pack_linear_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` (out, in) reordered by oneDNN for inputs of `rows` rows (uncached; see `packed_weight`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def pack_conv_weight(weight: torch.Tensor, padding: int, stride: int, groups: int,
                     input_shape: list[int]) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight, [padding, padding], [stride, stride], [1, 1], groups, input_shape)


def linear_op(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, act: str) -> torch.Tensor:
    """act(x @ W^T + b) by oneDNN, with the activation as a post-op."""
    post_op, algorithm = _POST_OPS[act]
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, post_op, [], algorithm)


def conv_op(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, padding: int, stride: int,
            groups: int, act: str) -> torch.Tensor:
    post_op, algorithm = _POST_OPS[act]
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, [padding, padding], [stride, stride], [1, 1], groups, post_op, [], algorithm)


# ---------------------------------------------------------------- self-checks

# case (op, dtype, activation, layout...) -> whether the private op may run it
_VERDICTS: dict[tuple, bool] = {}
_WARNED: set[tuple[str, torch.dtype]] = set()


def reset_self_checks() -> None:
    """Forget every verdict (tests, or after swapping torch ops): the next use checks again."""
    _VERDICTS.clear()
    _WARNED.clear()


def self_check(case: tuple, probe: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Whether the private op may run `case`; decided once per process by `probe()`, which returns
    (private op's output, portable op's output) on a tiny input."""
    verdict = _VERDICTS.get(case)
    if verdict is None:
        verdict = _VERDICTS[case] = _run_probe(case, probe)
    return verdict


def _run_probe(case: tuple, probe: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> bool:
    try:
        with torch.no_grad():
            fast, portable = probe()
    except Exception as exc:  # noqa: BLE001 - any failure of a private op means: do not use it
        give_up(case, f"raised {type(exc).__name__}: {_first_line(exc)}")
        return False
    reference = portable.float()
    gap = ((fast.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-6)).item()
    if not gap <= SELF_CHECK_TOLERANCE[case[1]]:  # NaN fails too
        give_up(case, f"differs from the portable op by {gap:.1e} (relative) on a test input")
        return False
    return True


def give_up(case: tuple, reason: str) -> None:
    """Switch `case` to the portable op for this process; warn once per op and dtype."""
    _VERDICTS[case] = False
    op, dtype = case[0], case[1]
    if (op, dtype) not in _WARNED:
        _WARNED.add((op, dtype))
        warnings.warn(f"cmt-gen: torch's oneDNN {op} ({str(dtype).removeprefix('torch.')}) {reason}; "
                      "the portable PyTorch op runs instead in this process (same results)",
                      RuntimeWarning, stacklevel=3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def _probe_tensor(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(dtype)  # the caller's RNG stream is left alone


def _linear_probe(dtype: torch.dtype, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = _probe_tensor(2, 3, 8, dtype=dtype, generator=g)
    w, b = _probe_tensor(12, 8, dtype=dtype, generator=g), _probe_tensor(12, dtype=dtype, generator=g)
    fast = linear_op(x, pack_linear_weight(w, 6), b, act)
    return fast, activate(F.linear(x.float(), w.float(), b.float()), act)


def _conv_probe(dtype: torch.dtype, act: str, kernel: tuple[int, int], stride: int, padding: int,
                kind: str, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    c_in, c_out, groups = {"depthwise": (8, 8, 8), "grouped": (4, 4, 2), "dense": (4, 8, 1)}[kind]
    x = _probe_tensor(2, c_in, 8, 8, dtype=dtype, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = _probe_tensor(c_out, c_in // groups, *kernel, dtype=dtype, generator=g)
    b = _probe_tensor(c_out, dtype=dtype, generator=g)
    fast = conv_op(x, pack_conv_weight(w, padding, stride, groups, list(x.shape)), b, padding, stride, groups, act)
    return fast, activate(F.conv2d(x.float(), w.float(), b.float(), stride, padding, 1, groups), act)


def linear_case(dtype: torch.dtype, act: str = "none") -> tuple:
    return ("linear", dtype, act)


@torch.jit.unused
def linear_case_ok(dtype: torch.dtype, act: str = "none") -> bool:
    """Whether oneDNN's packed linear is trusted for this dtype and activation here."""
    return self_check(linear_case(dtype, act), lambda: _linear_probe(dtype, act))


@torch.jit.unused
def _conv_case(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, groups: int,
               act: str) -> tuple:
    c_in = weight.shape[1] * groups
    kind = "dense" if groups == 1 else "depthwise" if groups == c_in == weight.shape[0] else "grouped"
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return ("conv", x.dtype, act, tuple(weight.shape[2:]), stride, padding, kind, channels_last)


@torch.jit.unused
def conv_case_ok(case: tuple) -> bool:
    return self_check(case, lambda: _conv_probe(*case[1:]))


# ---------------------------------------------------------------- packed weights

# id(weight) -> (weak reference to the weight, what its values are, {input key: packed weight},
# (value probe, the bytes it read when packed) or None); see `_cached_pack`.
_PACKED: dict[int, tuple[weakref.ref, tuple, dict[object, torch.Tensor], tuple | None]] = {}
INPUT_KEYS_KEPT = 2  # packs per weight: the throughput batch and batch 1, say


@torch.jit.unused
def _cached_pack(weight: torch.Tensor, input_key: object, pack: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`pack()` (the weight in oneDNN's blocked layout for inputs like `input_key`), made once, reused.

    The pack is keyed by the weight object, its version counter and its storage,
    dtype and device, so an in-place update (`load_state_dict`, `copy_`), new
    data behind the same parameter (`model.to(torch.bfloat16)`, `.data = ...`)
    or a new weight repacks, and it is dropped with the weight. A write through
    `.data` moves no version counter; a sample of the weight's bytes catches it
    (`value_probe`). It costs one
    more copy of the weight per input key kept. A weight created under
    inference_mode has no version counter, so it is used unpacked (the deploy
    rewrite gives its weights version counters however it was called).
    """
    if weight.is_inference():  # made under inference_mode: no version counter to notice an update by
        return weight
    key = id(weight)
    state = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
    entry = _PACKED.get(key)
    if entry is None or entry[0]() is not weight or entry[1] != state or (entry[3] and entry[3][0]() != entry[3][1]):
        probe = value_probe(weight)  # writes through .data move no version counter (see value_probe)
        entry = (weakref.ref(weight), state, {}, (probe, probe()) if probe else None)
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
    """A linear's weight packed for `rows` input rows (unpacked, oneDNN reorders it on every call)."""
    return _cached_pack(weight, rows, lambda: pack_linear_weight(weight, rows))


@torch.jit.unused
def packed_conv_weight(weight: torch.Tensor, x: torch.Tensor, padding: int, stride: int,
                       groups: int) -> torch.Tensor:
    """A convolution's weight packed for inputs shaped like `x` (oneDNN still runs other shapes
    with it, reordering as needed)."""
    shape = tuple(x.shape)
    return _cached_pack(weight, shape, lambda: pack_conv_weight(weight, padding, stride, groups, list(shape)))


# ---------------------------------------------------------------- the ops

@torch.jit.unused
def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   act: str) -> torch.Tensor | None:
    """The oneDNN linear, or None where it is not usable or not trusted here."""
    if not (onednn_usable(x) and x.is_contiguous() and weight.dtype == x.dtype and linear_case_ok(x.dtype, act)):
        return None
    try:
        return linear_op(x, packed_weight(weight, x.numel() // x.shape[-1]), bias, act)
    except RuntimeError as exc:
        give_up(linear_case(x.dtype, act), f"raised on a {tuple(x.shape)} input: {_first_line(exc)}")
        return None


@torch.jit.unused
def _onednn_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, stride: int,
                 groups: int, act: str) -> torch.Tensor | None:
    """The oneDNN convolution, or None where it is not usable or not trusted here."""
    if not (onednn_usable(x) and weight.dtype == x.dtype):
        return None
    case = _conv_case(x, weight, stride, padding, groups, act)
    if not conv_case_ok(case):
        return None
    try:
        return conv_op(x, packed_conv_weight(weight, x, padding, stride, groups), bias, padding, stride, groups, act)
    except RuntimeError as exc:
        give_up(case, f"raised on a {tuple(x.shape)} input: {_first_line(exc)}")
        return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none",
           use_onednn: bool = True) -> torch.Tensor:
    """act(x @ weight^T + bias) over the last dimension of `x`."""
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript drops this block only when it stands alone)
        if use_onednn:
            y = _onednn_linear(x, weight, bias, act)
            if y is not None:
                return y
            if x.dim() == 3 and capture.inductor_on_cpu(x):
                return token_linear_as_conv(x, weight, bias, act)
    return activate(F.linear(x, weight, bias), act)


def token_linear_as_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         act: str) -> torch.Tensor:
    """The same linear as a 1x1 convolution over a channels-last view of the (B, N, C) tokens.

    Inductor lowers an fp32 linear with static shapes to MKL's packed sgemm, which
    on some CPUs runs well below oneDNN; a 1x1 convolution it lowers to oneDNN with
    pre-packed weights and the activation fused (`benchmarks/NOTES.md`).
    """
    b, n, c = x.shape
    y = F.conv2d(x.reshape(b, n, 1, c).permute(0, 3, 1, 2), weight[:, :, None, None], bias)
    return activate(y, act).permute(0, 2, 3, 1).reshape(b, n, -1)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, stride: int,
           groups: int, act: str = "none", use_onednn: bool = True) -> torch.Tensor:
    """act(conv2d(x)); keeps a channels-last input channels-last."""
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript drops this block only when it stands alone)
        if use_onednn:
            y = _onednn_conv(x, weight, bias, padding, stride, groups, act)
            if y is not None:
                return y
    return activate(F.conv2d(x, weight, bias, stride, padding, 1, groups), act)
