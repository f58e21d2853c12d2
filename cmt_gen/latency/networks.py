"""Whole networks a calibration times: drawn over the legal design space, so the fit sees what blocks cost
inside real networks (weights and maps of the blocks before them in the caches, the glue between stages).

Each network reshapes one of the four released bases (CMT-Ti, -XS, -S, -B): a resolution from 128 to
384 px, per-stage widths from 0.5x to 2x the base's (one multiplier for the network, each stage jittered
by up to 1.3x either way, so narrow-first, wide-last shapes appear too), depths from 0.5x to 2x, and an
expansion ratio from 2 to 6 on a 0.25 grid. Draws are seeded, stratified over bases and resolutions, and
capped in MACs per image to keep the calibration within minutes. Torch-free; `cmt-gen sample` draws its
specs another way (one width multiplier, `design`'s rounding), so the benchmark's unseen specs are never
among these.
"""

from __future__ import annotations

import math
import random

BASES = ("cmt_ti", "cmt_xs", "cmt_s", "cmt_b")
NETWORK_RESOLUTIONS = tuple(range(128, 385, 32))
DEFAULT_NETWORKS = 24
NETWORK_MAX_MACS = 2.0e9  # per image; at batch 8 on one CPU thread, about half a second a call
MAX_TRIES = 400


def draw_networks(count: int = DEFAULT_NETWORKS, seed: int = 0,
                  max_macs: float = NETWORK_MAX_MACS) -> list[tuple[str, object]]:
    """`count` distinct legal specs (name, CMTSpec), a base and a resolution each in turn, seeded."""
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.errors import CmtGenError
    from cmt_gen.spec.loading import load_spec

    rng = random.Random(seed)
    bases = {name: load_spec(name) for name in BASES}
    sizes = list(NETWORK_RESOLUTIONS)
    rng.shuffle(sizes)
    drawn: list[tuple[str, object]] = []
    seen: set[str] = set()
    for i in range(count):
        name = BASES[i % len(BASES)]
        base = bases[name]
        resolution = sizes[i % len(sizes)]
        for attempt in range(MAX_TRIES):
            overrides = _reshape(rng, base, resolution)
            key = " ".join(overrides)
            if key in seen:
                continue
            try:
                spec = load_spec(name, [*overrides, f"name={name}_cal{seed}_{i:02d}"])
            except CmtGenError:
                continue  # a map side the K/V reduction does not divide, or another design rule
            if analytic_cost(spec).macs <= max_macs:
                seen.add(key)
                drawn.append((spec.name, spec))
                break
            if attempt % 20 == 19:  # too costly twenty times: a smaller input from now on
                resolution = max(NETWORK_RESOLUTIONS[0], resolution - 32)
        else:
            raise ValueError(f"no legal {name} network under {max_macs:.3g} MACs in {MAX_TRIES} draws")
    return drawn


def _reshape(rng: random.Random, base, resolution: int) -> list[str]:
    """Overrides that reshape `base`: widths, depths and expansion drawn as the module docstring says."""
    width = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    expansion = 2.0 + 0.25 * rng.randrange(17)
    stem = max(8, 8 * round(base.stem.channels * width / 8))
    overrides = [f"resolution={resolution}", f"stem.channels={stem}"]
    for i, stage in enumerate(base.stages):
        multiple = math.lcm(stage.heads, 8)
        channels = stage.channels * width * math.exp(rng.uniform(-math.log(1.3), math.log(1.3)))
        depth = max(1, round(stage.depth * math.exp(rng.uniform(math.log(0.5), math.log(2.0)))))
        overrides += [f"stages.{i}.channels={max(multiple, multiple * round(channels / multiple))}",
                      f"stages.{i}.depth={depth}", f"stages.{i}.expansion={expansion}"]
    return overrides
