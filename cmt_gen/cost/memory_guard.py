"""Refuse, before allocating, to build or run a model that would not fit in memory.

A typo such as `--set resolution=3200` would otherwise allocate a ~25 GB
position bias and get the process killed; the analytic count tells us first.
"""

from __future__ import annotations

import os

from cmt_gen.errors import CmtGenError

BYTES_PER_ELEMENT = 4  # float32


def available_memory() -> int:
    """Bytes the OS says a new process may use (MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def estimated_forward_bytes(spec, height: int, width: int, batch: int = 1) -> int:
    """float32 bytes of the parameters plus every conv/linear/attention output of one forward.

    An upper bound for inference (outputs are freed as it goes), about right for a trace.
    """
    from cmt_gen.cost.analytic import analytic_cost

    cost = analytic_cost(spec, height, width)
    return BYTES_PER_ELEMENT * (cost.params + batch * cost.activations)


def check_fits(spec, height: int, width: int, batch: int, *, action: str, alternative: str,
               field: str, memory_limit: int | None = None, force: bool = False) -> None:
    """Raise a CmtGenError naming the estimate and the way to force it when it would not fit."""
    if force:
        return
    need = estimated_forward_bytes(spec, height, width, batch)
    limit = available_memory() if memory_limit is None else memory_limit
    if need > limit:
        raise CmtGenError(
            f"{action} at {height}x{width} needs about {need / 2**30:.1f} GiB (4 bytes x (parameters + "
            f"activations of one forward pass), from the analytic count), more than the {limit / 2**30:.1f} GiB "
            f"available; {alternative}",
            source=spec.name, field=field,
        )
