"""The stage's position bias at any input size, shared by the trained and the deploy form.

`stage` / `block` biases: bicubic resampling over the query grid, then the key
grid, as the released model does when it runs at another resolution. `table`:
a per-head table of query-key offsets, gathered for the input's grid, its
offsets clamped to the table's range (nothing resampled, no size-dependent parameter).
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


def table_index(grid: tuple[int, int], reduction: int, h: int, w: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of the (2 Hs - k, 2 Ws - k) offset table of `grid` (the spec's stage grid) for each
    query and key cell of an h x w map, shaped (h, 1, h/k, 1) and (1, w, 1, w/k) to broadcast: key cell j
    covers query rows kj..kj+k-1, so the row offset q - kj lies in -(Hs - k)..Hs - 1 at the own grid;
    other sizes clamp to that range.

    Two small factors, not one (N, N / k^2) index: at 1280x800 CMT-S's flat int64 indices would take
    680 MB, more than the biases they gather. Torch ops on the sizes only (arange, mul, add, clamp):
    traced, exported and FX graphs compute it for any size, and fvcore counts none of it."""
    rows = _offsets(grid[0], reduction, h, device)
    cols = _offsets(grid[1], reduction, w, device)
    return rows[:, None, :, None], cols[None, :, None, :]


def _offsets(side: int, reduction: int, n: int, device: torch.device) -> torch.Tensor:
    """(n, n / k) table positions of each (query, key cell) offset along one axis, clamped to the table."""
    queries = torch.arange(n, device=device)
    keys = torch.arange(n // reduction, device=device) * -reduction  # a sum, not a sub: fvcore ignores add
    return (queries[:, None] + keys[None, :] + (side - reduction)).clamp(0, 2 * side - reduction - 1)


def gather_table(table: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The (heads, N, N / k^2) bias: each head's table at the offsets of `index` (a gather, no MACs)."""
    rows, cols = index
    return table[:, rows, cols].flatten(1, 2).flatten(2)


def table_bias(table: torch.Tensor, grid: tuple[int, int], reduction: int, h: int, w: int) -> torch.Tensor:
    """The table gathered for an h x w query map, its index computed in the graph (see `table_index`)."""
    return gather_table(table, table_index(grid, reduction, h, w, table.device))
