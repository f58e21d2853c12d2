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


# What a run keeps of the activations: inference frees each block's outputs (twice the largest
# block, for softmax and matmul copies); a trace or a training step keeps them all (training
# twice, for their gradients).
HOLDS = {"infer": "peak", "trace": "all", "train": "all"}
# Copies of the weights: training adds gradients and AdamW's two moments.
WEIGHT_COPIES = {"infer": 1, "trace": 1, "train": 4}


def memory_parts(spec, height: int, width: int, batch: int = 1, mode: str = "trace") -> dict[str, int]:
    """float32 bytes of the weights, the input batch and the activations a run holds at its peak."""
    from cmt_gen.cost.analytic import analytic_cost

    if mode not in HOLDS:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(HOLDS)}")
    cost = analytic_cost(spec, height, width)
    peak = HOLDS[mode] == "peak"
    acts = 2 * cost.peak_activations if peak else cost.activations * (2 if mode == "train" else 1)
    return {
        "weights": BYTES_PER_ELEMENT * cost.params * WEIGHT_COPIES[mode],
        "input": BYTES_PER_ELEMENT * batch * spec.in_channels * height * width,
        "activations": BYTES_PER_ELEMENT * batch * acts,
    }


def estimated_forward_bytes(spec, height: int, width: int, batch: int = 1, mode: str = "trace") -> int:
    """float32 bytes of weights + input batch + activations held at the peak of a run (see `memory_parts`).

    With mode "trace" (every output kept) an upper bound for inference, about right for a trace.
    """
    return sum(memory_parts(spec, height, width, batch, mode).values())


def check_fits(spec, height: int, width: int, batch: int, *, action: str, alternative: str,
               field: str, memory_limit: int | None = None, force: bool = False, mode: str = "trace") -> None:
    """Raise a CmtGenError naming the estimate and the way to force it when it would not fit."""
    if force:
        return
    parts = memory_parts(spec, height, width, batch, mode)
    need = sum(parts.values())
    limit = available_memory() if memory_limit is None else memory_limit
    if need > limit:
        detail = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in parts.items())
        raise CmtGenError(
            f"{action} at {height}x{width}, batch {batch}, needs about {need / 2**30:.1f} GiB (float32 {detail} "
            f"GiB, from the analytic count), more than the {limit / 2**30:.1f} GiB available; {alternative}",
            source=spec.name, field=field,
        )


def check_detector_fits(spec, batch: int, force: bool, action: str) -> None:
    """Refuse up front, from the backbone's analytic activations at the detector's input, a run that would not fit."""
    h, w = spec.input.height, spec.input.width
    check_fits(spec.backbone, h, w, batch, action=action, alternative="lower the detector's input size, "
               "or pass --force", field="input", force=force, mode="infer")
