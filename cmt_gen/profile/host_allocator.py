"""Whether the C allocator keeps freed memory for reuse or hands it back to the OS at once.

Why this matters for CPU inference: glibc serves every allocation above its
mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on free, so
each such tensor is page-faulted in again on every forward, one 4 KiB page at a
time; for a CNN-sized batch that can be most of a forward (`benchmarks/NOTES.md`,
"Host allocator policy"; `benchmarks/bench_inference.py` has rows with and
without). PyTorch's CPU tuning guides fix this by preloading
jemalloc or tcmalloc; `retain` gets the same effect from glibc itself:
`mallopt(M_MMAP_MAX, 0)` serves large blocks from the heap and a high
`M_TRIM_THRESHOLD` keeps freed heap for the next forward. The cost: the
process keeps its peak memory resident until it exits (or `malloc_trim`).

Policies: `system` (the C library's defaults), `retain`, and `auto` (retain on
Linux with glibc unless another allocator is preloaded, system elsewhere).
Process-wide: `allocator_policy` scopes a change and restores what was before.
Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Iterator

from cmt_gen.errors import CmtGenError

POLICIES = ("auto", "system", "retain")
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

# glibc's mallopt parameters (malloc.h) and the values its dynamic threshold settles on once a
# block of 32 MiB or more has been freed (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; trim = 2x).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX = 65536
_SETTLED_MMAP_THRESHOLD = 32 << 20
_SETTLED_TRIM_THRESHOLD = 64 << 20
_KEEP_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
# The same policy for a process cmt-gen does not run: glibc reads these tunables at start-up.
RETAIN_ENVIRONMENT = f"MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_={_KEEP_TRIM_THRESHOLD}"

_state = {"current": "system"}


def preloaded_allocator() -> str | None:
    """jemalloc / tcmalloc / mimalloc named in LD_PRELOAD: it already keeps freed memory."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in PRELOADED if name in preload), None)


def _mallopt():
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def retain_unavailable() -> str | None:
    """Why `retain` cannot be set here, or None when it can."""
    if preloaded_allocator():
        return f"{preloaded_allocator()} is preloaded (LD_PRELOAD) and manages memory itself"
    if _mallopt() is None:
        return f"retain needs glibc's mallopt (Linux); this is {sys.platform} with " \
               f"{platform.libc_ver()[0] or 'an unknown C library'}"
    return None


def resolve_policy(policy: str, device_type: str = "cpu") -> str:
    """`auto` -> `retain` for CPU runs where glibc can do it, else `system`; an impossible `retain` is an error."""
    if policy not in POLICIES:
        raise CmtGenError(f"unknown allocator {policy!r}; use one of {', '.join(POLICIES)}", field="allocator")
    if policy == "auto":
        return "retain" if device_type == "cpu" and retain_unavailable() is None else "system"
    if policy == "retain" and (why := retain_unavailable()):
        raise CmtGenError(f"--allocator retain is not available: {why}", field="allocator")
    return policy


def describe(policy: str) -> str:
    """What a result record says about the allocator it ran under."""
    if preloaded_allocator():
        return f"{preloaded_allocator()} (preloaded)"
    if policy == "retain":
        return "retain (glibc keeps freed memory: mmap off, no trimming)"
    return "system (C library defaults)"


def set_policy(policy: str) -> str:
    """Switch the process's allocator behaviour; returns the policy that was in force."""
    before = _state["current"]
    policy = resolve_policy(policy)
    mallopt = _mallopt()
    if policy == before or preloaded_allocator() or mallopt is None:
        _state["current"] = policy
        return before
    if policy == "retain":
        mallopt(_M_MMAP_MAX, 0)
        mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD)
    else:
        # Any mallopt call turns glibc's dynamic threshold off for good, so "system" after a change is
        # the state that threshold settles in on a workload with large tensors, set explicitly.
        mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
        mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
    _state["current"] = policy
    return before


def current_policy() -> str:
    return _state["current"]


@contextlib.contextmanager
def allocator_policy(policy: str) -> Iterator[str]:
    """Run a block under `policy` (resolved for CPU); the policy before is restored after."""
    before = set_policy(policy)
    try:
        yield current_policy()
    finally:
        set_policy(before)
