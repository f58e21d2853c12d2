"""A larger oneDNN primitive cache for processes that time many different networks.

oneDNN compiles a kernel ("primitive") per shape and keeps the last 1024 in an
LRU cache. A profiling or calibration run builds dozens of networks, and once
the cache had seen about thirty of them, later networks ran 15-35% slower
in one `cmt-gen profile` of 30 sampled specs (1 thread, batch 8): the same spec measured
58.8 img/s there and 72.5 img/s with a 16384-entry cache or alone. The capacity is read
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
