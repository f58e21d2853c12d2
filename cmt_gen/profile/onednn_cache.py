"""A larger oneDNN primitive cache for processes that time many different networks.

oneDNN compiles a kernel ("primitive") per shape and keeps the last 1024 in an
LRU cache. A profiling or calibration run builds dozens of networks, and once
the cache has seen a few dozen of them, later networks are measured slower than they
run alone (`benchmarks/NOTES.md`, "oneDNN primitive cache"). The capacity is read
from `ONEDNN_PRIMITIVE_CACHE_CAPACITY` when oneDNN creates its first primitive,
so it is set before any model runs; a value the user exported wins. Torch-free.
"""

from __future__ import annotations

import os

CAPACITY_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
CAPACITY = 16384  # entries; each holds a compiled kernel (kilobytes), filled only as shapes are seen


def enlarge_primitive_cache() -> str:
    """Ask for `CAPACITY` entries unless the user chose a value; returns the value in force.

    Without effect once this process has run a oneDNN operation (the cache exists by then).
    """
    return os.environ.setdefault(CAPACITY_ENV, str(CAPACITY))
