"""Refuse, before anything is built, a profile run whose models would not fit on the device.

`cmt-gen profile --set resolution=3200` would otherwise try to allocate tens of
GB mid-run; the analytic count of weights, input batch and activations answers
first, as `build` does. `--force` (force=True) skips the guard.
"""

from __future__ import annotations

from collections.abc import Iterable

from cmt_gen.cost.memory_guard import check_fits
from cmt_gen.devices import device_for
from cmt_gen.spec.schema import CMTSpec


def device_memory(settings) -> int:
    """Bytes free on the device the run measures: a GPU's own memory, else the host's (`Device.free_memory`)."""
    return device_for(settings.device_type).free_memory(settings.device)


def check_profile_fits(specs: Iterable[CMTSpec], settings, *, force: bool = False,
                       memory_limit: int | None = None) -> None:
    """Raise a CmtGenError for the first spec whose run would not fit (batch as set; 1 when it decays)."""
    if force:
        return
    batch = 1 if settings.largest_batch else settings.batch_size
    limit = device_memory(settings) if memory_limit is None else memory_limit
    mode = "train" if settings.mode == "train" else "infer"
    for spec in specs:
        check_fits(spec, spec.resolution, spec.resolution, batch, action=f"profiling it ({settings.mode})",
                   alternative="lower --batch-size, the resolution or the widths, or pass --force",
                   field="profile", memory_limit=limit, mode=mode)
