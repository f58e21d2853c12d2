"""The stage's position bias at any input size, shared by the trained and the deploy form.

Bicubic resampling over the query grid, then the key grid, as the released
model does when it runs at another resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmt_gen.ops.capture import recording


def resample_position_bias(bias: torch.Tensor, q_grid: tuple[int, int], kv_grid: tuple[int, int],
                           new_q: tuple[int, int], new_kv: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of a (heads, Nq, Nk) bias over its query grid, then its key grid.

    Branch-free on purpose: a Python `if same grid` would bake the traced size into
    jit.trace / torch.export graphs. Bicubic at scale 1 samples each point with
    weights (0, 1, 0, 0), so at the stored grid the result is bit-for-bit the bias
    (tests/test_export_paths.py holds it to that).
    """
    heads, n_kv = bias.shape[0], bias.shape[2]
    dtype = bias.dtype
    if not torch.jit.is_scripting():  # noqa: SIM102 - TorchScript skips only a block guarded on its own
        if fp16_on_cpu(bias):  # no fp16 bicubic kernel on CPUs before torch 2.3: resample in fp32
            bias = bias.float()
    x = bias.reshape(heads, q_grid[0], q_grid[1], n_kv).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=new_q, mode="bicubic", align_corners=False)
    n_q = new_q[0] * new_q[1]
    x = x.reshape(heads, kv_grid[0], kv_grid[1], n_q).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=new_kv, mode="bicubic", align_corners=False)
    return x.reshape(heads, n_q, new_kv[0] * new_kv[1]).to(dtype)


@torch.jit.unused
def fp16_on_cpu(bias: torch.Tensor) -> bool:
    """A real fp16 CPU tensor (FX's symbolic proxies are not tensors: they take the plain path)."""
    return isinstance(bias, torch.Tensor) and bias.dtype == torch.float16 and bias.device.type == "cpu"


def position_bias_at(bias: torch.Tensor, q_grid: tuple[int, int], kv_grid: tuple[int, int],
                     new_q: tuple[int, int], new_kv: tuple[int, int]) -> torch.Tensor:
    """The bias at this input's grids. Eager mode skips the resampling at the stored grid (an exact
    copy there, but a measurable share of a CPU forward: `benchmarks/NOTES.md`); graphs (script,
    trace, FX, export) always resample, so they hold at every size."""
    if not torch.jit.is_scripting():  # noqa: SIM102 - TorchScript skips only a block guarded on its own
        if at_stored_grid_in_eager(q_grid, kv_grid, new_q, new_kv):
            return bias
    return resample_position_bias(bias, q_grid, kv_grid, new_q, new_kv)


@torch.jit.unused
def at_stored_grid_in_eager(q_grid, kv_grid, new_q, new_kv) -> bool:
    return not recording() and (tuple(q_grid), tuple(kv_grid)) == (tuple(new_q), tuple(new_kv))
