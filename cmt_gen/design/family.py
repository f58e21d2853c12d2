"""How far a design departs from the CMT family's proportions, judged by the bundled family itself.

The paper trained only its family (CMT-Ti to CMT-L); a design far from the
family's proportions has an untested accuracy, whatever its params, MACs or
speed. The paper's design rules, and what "far" means for each, all taken from
the bundled specs (specs/*.yaml), never from a number written here:

- depth concentrated in stage 3: the family's stage-3 share of all blocks
  spans [lo, hi] (57-64%: CMT-XS's 12 of 21 to CMT-S's 16 of 25); far is
  outside that range widened on each side by
  half its own width, and by at least one block of the design's depth (a
  share moves in steps of one block);
- channels growing stage to stage (the family doubles them): far is a stage
  no wider than the one before it;
- total depth not far below the family's at the same MACs: the family's total
  depth against MACs, interpolated log-log between neighbours (extrapolated
  beyond CMT-Ti and CMT-L along the end segment); far is shallower than that
  by more than the family's largest depth step between neighbours (x1.31,
  CMT-Ti's 16 blocks to CMT-XS's 21).

Torch-free: costs are `analytic_cost`'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

MAIN_STAGE = 2  # stage 3 (0-based 2) holds most of the family's blocks


@dataclass(frozen=True)
class Member:
    name: str
    macs: int
    depths: tuple[int, ...]
    channels: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.depths)

    @property
    def share(self) -> float:
        return self.depths[MAIN_STAGE] / self.total


@dataclass(frozen=True)
class Family:
    """The bundled CMT family, smallest MACs first, and the ranges its proportions span."""

    members: tuple[Member, ...]

    @property
    def stages(self) -> int:
        return len(self.members[0].depths)

    @property
    def share_range(self) -> tuple[float, float]:
        shares = [m.share for m in self.members]
        return min(shares), max(shares)

    def share_margin(self, total: int) -> float:
        """Half the family's own range of shares, and at least one block of a design this deep."""
        lo, hi = self.share_range
        return max((hi - lo) / 2, 1 / total)

    @property
    def depth_step(self) -> float:
        """The largest ratio of total depths between neighbours in MACs: the family's coarsest step."""
        pairs = zip(self.members[:-1], self.members[1:], strict=False)
        return max(max(b.total, a.total) / min(b.total, a.total) for a, b in pairs)

    @property
    def growth(self) -> tuple[float, float]:
        """Smallest and largest channel ratio from one stage to the next."""
        ratios = [b / a for m in self.members for a, b in zip(m.channels[:-1], m.channels[1:], strict=False)]
        return min(ratios), max(ratios)

    def expected_depth(self, macs: float) -> tuple[float, Member]:
        """The family's total depth at these MACs (log-log between neighbours) and its nearest member."""
        ms = self.members
        nearest = min(ms, key=lambda m: abs(math.log(m.macs / macs)))
        if len(ms) == 1:
            return float(ms[0].total), nearest
        k = next((i for i in range(1, len(ms) - 1) if macs <= ms[i].macs), len(ms) - 1)
        a, b = ms[k - 1], ms[k]
        slope = max(0.0, math.log(b.total / a.total) / math.log(b.macs / a.macs))
        return a.total * (macs / a.macs) ** slope, nearest


@functools.lru_cache(maxsize=1)
def bundled_family() -> Family:
    """The bundled CMT specs with four stages, ordered by their analytic MACs."""
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.spec.bundled import bundled_names
    from cmt_gen.spec.loading import load_spec

    members = []
    for name in bundled_names():
        spec = load_spec(name)
        members.append(Member(name, analytic_cost(spec).macs, tuple(s.depth for s in spec.stages),
                              tuple(s.channels for s in spec.stages)))
    stages = max((len(m.depths) for m in members), default=0)
    kept = sorted((m for m in members if len(m.depths) == stages), key=lambda m: m.macs)
    if not kept:
        raise RuntimeError("no bundled CMT family to compare designs with")
    return Family(tuple(kept))


def _giga(macs: float) -> str:
    from cmt_gen.spec.quantity import format_in_unit

    return format_in_unit(macs, "macs")


def departures(depths: Sequence[int], channels: Sequence[int], macs: float,
               family: Family | None = None) -> list[str]:
    """What departs far from the family's proportions, one phrase each; empty for a family-like design."""
    family = family or bundled_family()
    found: list[str] = []
    total = sum(depths)
    if len(depths) != family.stages:
        found.append(f"{len(depths)} stages where the family has {family.stages}")
    else:
        share = depths[MAIN_STAGE] / total
        lo, hi = family.share_range
        margin = family.share_margin(total)
        if not lo - margin <= share <= hi + margin:
            found.append(f"stage 3 holds {share:.0%} of the blocks ({depths[MAIN_STAGE]} of {total}; family "
                         f"{lo:.0%}-{hi:.0%}; far: outside {max(0.0, lo - margin):.0%}-{min(1.0, hi + margin):.0%})")
    flat = [i for i in range(1, len(channels)) if channels[i] <= channels[i - 1]]
    if flat:
        low, _ = family.growth
        where = ", ".join(f"stage {i + 1} ({channels[i]}) after {channels[i - 1]}" for i in flat)
        found.append(f"channels do not grow: {where} (the family widens each stage x{low:g} or more)")
    expected, nearest = family.expected_depth(macs)
    floor = expected / family.depth_step
    if total < floor:
        found.append(f"{total} blocks in all where the family has about {expected:.0f} at {_giga(macs)} MACs "
                     f"({nearest.name}: {nearest.total} blocks at {_giga(nearest.macs)}; far: under {floor:.0f})")
    return found


def proportions_note(depths: Sequence[int], channels: Sequence[int], macs: float,
                     family: Family | None = None) -> str:
    """One provenance line: how the design sits against the family's proportions."""
    family = family or bundled_family()
    found = departures(depths, channels, macs, family)
    if found:
        return ("proportions: far from the CMT family's - " + "; ".join(found)
                + ". The paper trained only the family: accuracy is untested this far from it.")
    expected, _ = family.expected_depth(macs)
    lo, hi = family.share_range
    share = f"stage 3 holds {depths[MAIN_STAGE] / sum(depths):.0%} (family {lo:.0%}-{hi:.0%}), " \
        if len(depths) == family.stages else ""
    return (f"proportions: close to the CMT family's - {share}{sum(depths)} blocks (family about "
            f"{expected:.0f} at {_giga(macs)} MACs), channels growing; accuracy is still untested (the paper "
            "trained only the family).")
