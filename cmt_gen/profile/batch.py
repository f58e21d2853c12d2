"""Out-of-memory recovery: retry a measurement with the next smaller batch (256, 192, 128, 96, ...).

The ladder interleaves powers of two with their 3/2 multiples, as timm's
benchmark does, so a decay loses at most a third of the batch per step.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def ladder_values(limit: int) -> list[int]:
    """All ladder values up to `limit`, descending: ..., 256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1."""
    values = {1}
    power = 2
    while power <= limit:
        values.add(power)
        if power * 3 // 2 <= limit:
            values.add(power * 3 // 2)
        power *= 2
    return sorted((v for v in values if v <= limit), reverse=True)


def batch_ladder(start: int) -> list[int]:
    """The batches tried from `start` downwards: start itself, then every smaller ladder value."""
    if start < 1:
        raise ValueError(f"batch must be >= 1, got {start}")
    return [start, *(v for v in ladder_values(start) if v < start)]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), or an allocator's 'out of memory' RuntimeError (MPS, CPU)."""
    try:
        import torch

        # torch.OutOfMemoryError since torch 2.5; torch.cuda's name for the same class before
        if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
            return True
    except (ImportError, AttributeError):
        pass
    if isinstance(exc, (RuntimeError, MemoryError)):
        text = str(exc).lower()
        return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text
    return False


def free_device_memory(device: str | None = None) -> None:
    """Drop what an aborted attempt left behind, including the device's allocator cache (`Device.empty_cache`;
    None: the device `auto` picks, so the CUDA cache wherever CUDA is present)."""
    gc.collect()
    try:
        from cmt_gen.devices import device_for, resolve

        name = resolve("auto") if device is None else device
        device_for(name).empty_cache(name)
    except ImportError:
        pass


@dataclass
class DecayOutcome(Generic[T]):
    value: T
    batch: int
    tried: list[int] = field(default_factory=list)  # every batch attempted, the successful one last

    @property
    def decayed(self) -> bool:
        return len(self.tried) > 1


class OutOfMemoryAtSmallestBatch(RuntimeError):
    """Even the smallest batch did not fit."""


def run_with_batch_decay(
    attempt: Callable[[int], T],
    start: int,
    *,
    decay: bool = True,
    is_oom: Callable[[BaseException], bool] = is_out_of_memory,
    cleanup: Callable[[], None] = free_device_memory,
    on_decay: Callable[[int, int], None] | None = None,
) -> DecayOutcome[T]:
    """Call `attempt(batch)` down the ladder from `start` until one fits; other errors propagate.

    The exception of a failed attempt is dropped before the next try so that the
    tensors its traceback holds are freed.
    """
    tried: list[int] = []
    ladder = batch_ladder(start) if decay else [start]
    for index, batch in enumerate(ladder):
        tried.append(batch)
        failure: str | None = None
        try:
            return DecayOutcome(attempt(batch), batch, tried)
        except BaseException as exc:  # noqa: BLE001 - filtered right below
            if not is_oom(exc):
                raise
            failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        cleanup()
        if on_decay and index + 1 < len(ladder):
            on_decay(batch, ladder[index + 1])
    raise OutOfMemoryAtSmallestBatch(
        f"out of memory at every batch tried ({', '.join(map(str, tried))}); last error: {failure}"
    )
