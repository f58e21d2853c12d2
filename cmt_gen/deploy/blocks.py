"""Building blocks of the deploy form: token linears and convs with fused activations, a channel
affine, token/map views of one channels-last buffer, and the per-size position-bias cache."""

from __future__ import annotations

import torch
from torch import nn

from cmt_gen.deploy import onednn
from cmt_gen.deploy.folding import fold_affine_before, parameter
from cmt_gen.deploy.value_probe import value_probe
from cmt_gen.ops import capture
from cmt_gen.ops.position_bias import gather_table, resample_position_bias, table_bias, table_index

# FX records the table's gather as one call: torch < 2.3 cannot trace torch.arange of a symbolic size.
torch.fx.wrap("table_bias")


def tokens_as_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) contiguous tokens -> (B, C, H, W) channels-last view of the same memory."""
    return x.reshape(x.shape[0], h, w, x.shape[2]).permute(0, 3, 1, 2)


def map_as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, N, C) tokens; a view when the map is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2] * x.shape[3], x.shape[1])


class TokenLinear(nn.Module):
    """act(x W^T + b) on (B, N, C) tokens: a 1x1 conv (or a linear) with its activation fused
    (oneDNN on CPU, see `deploy.onednn`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, act: str = "none"):
        super().__init__()
        self.weight = parameter(weight)
        self.bias = parameter(bias)
        self.act = act
        self.use_onednn = True  # the benchmark's ablation turns it off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.linear(x, self.weight, self.bias, self.act, self.use_onednn)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, act={self.act}"


def linear_layer(weight: torch.Tensor, bias: torch.Tensor, act: str = "none") -> TokenLinear:
    return TokenLinear(weight, bias, act)


def fold_linear_input(layer: TokenLinear, scale: torch.Tensor, shift: torch.Tensor) -> TokenLinear:
    """`layer` with an affine on its input folded in (exact for a linear)."""
    return linear_layer(*fold_affine_before(layer.weight, layer.bias, scale, shift), layer.act)


def set_conv(conv: nn.Conv2d | FusedConv, weight: torch.Tensor, bias: torch.Tensor) -> None:
    conv.weight = parameter(weight)
    conv.bias = parameter(bias)


class FusedConv(nn.Module):
    """A (folded) `nn.Conv2d` with its activation fused (oneDNN on CPU, see `deploy.onednn`)."""

    def __init__(self, conv: nn.Conv2d, act: str = "none"):
        super().__init__()
        self.weight = parameter(conv.weight)
        self.bias = parameter(conv.bias)
        self.padding: int = conv.padding[0]
        self.stride: int = conv.stride[0]
        self.groups: int = conv.groups
        self.act = act
        self.use_onednn = True  # the benchmark's ablation turns it off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.conv2d(x, self.weight, self.bias, self.padding, self.stride, self.groups, self.act,
                             self.use_onednn)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, act={self.act}")




class ChannelAffine(nn.Module):
    """A BatchNorm that cannot fold (GELU before it, a padded conv after it), as one multiply-add."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale = parameter(scale.float())
        self.shift = parameter(shift.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return torch.addcmul(self.shift, x, self.scale)
        if x.dtype != self.scale.dtype:  # autocast: computed in fp32, given back in x's dtype
            return torch.addcmul(self.shift, x, self.scale).to(x.dtype)
        return torch.addcmul(self.shift, x, self.scale, out=x)  # x is a fresh intermediate


def resample_bias(bias: torch.Tensor, grid: tuple[int, int], r: int, h: int, w: int) -> torch.Tensor:
    """The (heads, N, N / r^2) bias stored for `grid`, bicubically resampled to an h x w map
    (branch-free, so a traced graph holds at every size)."""
    return resample_position_bias(bias, grid, (grid[0] // r, grid[1] // r), (h, w), (h // r, w // r))


_CACHE_STATE = ["_bias_cache", "_bias_source", "_bias_probe", "_index_cache"]


# Input sizes whose position biases a stage keeps (the oldest goes first): CMT-S's at 1280x800 hold
# 458 MiB, and a detector's padded batches come in many sizes.
BIAS_CACHE_SIZES = 4


def _make_room(cache: dict) -> None:
    """Drop the oldest sizes (dicts keep insertion order) until one more fits within BIAS_CACHE_SIZES."""
    while len(cache) >= BIAS_CACHE_SIZES:
        cache.pop(next(iter(cache)))


class BiasAtSize:
    """Mixin for the owners of a position bias, of both forms: the bias at an input's grid and dtype.

    A (heads, N, N / r^2) bias stored for `grid` is resampled, an offset table (`table=True`) gathered.
    In eager mode, where `_may_cache_bias()` allows (always in the deploy form; the trained
    `CMTStage` in eval mode without grad), it is made once per size and cached, not per forward, and
    remade when the weight changes (version counter, and `value_probe` for writes through `.data`).
    Graphs (script, trace, FX, export, compile) compute it in the graph, so they hold at every size.
    """

    __jit_ignored_attributes__ = _CACHE_STATE  # eager-only; TorchScript cannot type their keys

    def _bias_at(self, bias: torch.Tensor, h: int, w: int, dtype: torch.dtype, table: bool = False) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._bias_in_graph(bias, h, w, table).to(dtype)
        return self._cached_bias(bias, h, w, dtype, table)

    def _bias_in_graph(self, bias: torch.Tensor, h: int, w: int, table: bool) -> torch.Tensor:
        if table:
            return table_bias(bias, self.grid, self.reduction_ratio, h, w)
        return resample_bias(bias, self.grid, self.reduction_ratio, h, w)

    @torch.jit.unused
    def _may_cache_bias(self) -> bool:
        """The deploy form's weights are frozen: always. The trained stage overrides this."""
        return True

    @torch.jit.unused
    def _recording(self) -> bool:
        """A graph records the forward. The trained stage asks `recording()` alone, as it always did: the
        ONNX probe imports torch.onnx (a second on torch 2.2), and each ONNX exporter traces or exports."""
        return capture.recording() or capture.graph_capture()

    @torch.jit.unused
    def _cached_bias(self, bias: torch.Tensor, h: int, w: int, dtype: torch.dtype, table: bool) -> torch.Tensor:
        if self._recording():
            return self._bias_in_graph(bias, h, w, table).to(dtype)
        if not table and (h, w) == tuple(self.grid) and bias.dtype == dtype:
            return bias  # resampling at the stored grid is an exact copy (`ops.position_bias`)
        if not self._may_cache_bias() or bias.is_inference():  # an inference tensor has no version to watch
            for name in ("_bias_cache", "_bias_source"):  # training again: free what evaluation cached
                self.__dict__.pop(name, None)
            return self._eager_bias(bias, h, w, table).to(dtype)
        source = (bias.data_ptr(), bias._version)  # new weights (load_state_dict, copy_) make the cache stale
        probe = getattr(self, "_bias_probe", None)  # ...and so do writes through .data (see value_probe)
        if getattr(self, "_bias_source", None) != source or (probe is not None and probe[0]() != probe[1]):
            self._bias_cache, self._bias_source = {}, source
            reader = value_probe(bias)
            self._bias_probe = (reader, reader()) if reader is not None else None
        key = (h, w, dtype, bias.device)
        if key not in self._bias_cache:
            _make_room(self._bias_cache)
            with torch.no_grad():
                self._bias_cache[key] = self._eager_bias(bias, h, w, table).to(dtype)
        return self._bias_cache[key]

    @torch.jit.unused
    def _eager_bias(self, bias: torch.Tensor, h: int, w: int, table: bool) -> torch.Tensor:
        """The bias at h x w; a table's index made once per (grid, device): it depends on nothing else."""
        if not table:
            return resample_bias(bias, self.grid, self.reduction_ratio, h, w)
        cache = self.__dict__.setdefault("_index_cache", {})
        key = (h, w, bias.device)
        if key not in cache:
            _make_room(cache)
            cache[key] = table_index(self.grid, self.reduction_ratio, h, w, bias.device)
        return gather_table(bias, cache[key])

    @torch.jit.unused
    def __getstate__(self) -> dict:
        """Pickles and deep copies leave the caches behind: the probe is a closure (no pickle), and a copy's
        weights are new tensors that would refill them anyway."""
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in _CACHE_STATE}
