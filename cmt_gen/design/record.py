"""What a designed spec records about what it was designed for: budgets, resolution, calibration.

The spec's `budget:` holds params and MACs (`constraints.budget_record`), which
`cmt-gen check` checks. A speed target holds only for one calibrated device,
precision, batch and thread count, which a spec cannot carry and `check`
(a counter of params and MACs) cannot judge; so the speed target, the
calibration it was predicted from and the searched resolutions are written as
provenance lines instead, where a reader of the spec finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cmt_gen.design.constraints import Constraint
from cmt_gen.design.family import departures, proportions_note
from cmt_gen.latency.calibration_file import Calibration
from cmt_gen.spec.quantity import format_in_unit
from cmt_gen.spec.schema import CMTSpec

if TYPE_CHECKING:
    from cmt_gen.design.results import Design


def calibration_line(calibration: Calibration, source: str | Path | None, forced: list[str]) -> str:
    """'calibration: cal.json (created ...): machine ..., device cpu, fp32, batch 8, threads 4, ...'."""
    s = calibration.settings
    name = Path(source).name if source is not None else "given in Python (no file)"
    line = (f"calibration: {name} (created {calibration.created}): machine {calibration.machine}, device "
            f"{s.device}, precision {s.precision}, batch {s.batch_size}, threads {s.threads or 'default'}, "
            f"form {s.form}, torch {calibration.torch_version}")
    if forced:
        line += "; used with --force despite: " + "; ".join(forced)
    return line


def designed_for(params: Constraint | None, macs: Constraint | None, speed: Constraint | None,
                 resolution: object, searched: list[int], base_resolution: int,
                 calibration: Calibration | None = None, source: str | Path | None = None,
                 forced: list[str] | None = None) -> list[str]:
    """Provenance lines naming every budget a design was given and the calibration it used."""
    lines = []
    sizes = [c for c in (params, macs) if c is not None]
    if sizes:
        lines.append("designed for: " + ", ".join(f"{c.label} {c.describe()}" for c in sizes)
                     + " (recorded in budget:, which cmt-gen check checks)")
    if speed is not None:
        batch = f" at batch {calibration.settings.batch_size}" if calibration is not None else ""
        file = Path(source).name if source is not None else "FILE"
        lines.append(f"designed for: {speed.label} {speed.describe()}{batch}, predicted from the calibration "
                     "below; not in budget: (cmt-gen check counts params and MACs, not speed) - check it with "
                     f"cmt-gen predict SPEC --calibration {file} on that device")
    span = f"{searched[0]} px" if len(searched) == 1 else f"{searched[0]}..{searched[-1]} px"
    if resolution is None:
        lines.append(f"resolution: searched {span} (default: 0.5x-2x the base's {base_resolution} px)")
    else:
        given = f"{resolution[0]}..{resolution[1]}" if isinstance(resolution, (tuple, list)) else str(resolution)
        lines.append(f"resolution: searched {span} (asked for {given})")
    if calibration is not None:
        lines.append(calibration_line(calibration, source, forced or []))
    return lines


def predicted_line(seconds: float, batch: int) -> str:
    """This design's own predicted speed on the calibrated device."""
    return (f"predicted on the calibrated device: {batch / seconds:,.1f} images/s, {seconds * 1000:,.1f} ms per "
            f"batch of {batch} (cmt-gen predict --measure checks it)")


def with_record(spec: CMTSpec, summary: str, record: Sequence[str], seconds: float | None, batch: int | None,
                depths: Sequence[int], channels: Sequence[int], macs: float) -> tuple[CMTSpec, list[str]]:
    """The spec with what it was designed for and how it sits against the family written into its
    provenance (after the design's summary line, before its per-field changes); and its departures."""
    found = departures(depths, channels, macs)
    notes = [*record, *([predicted_line(seconds, batch)] if seconds is not None and batch else []),
             proportions_note(depths, channels, macs)]
    lines = list(spec.provenance)
    at = lines.index(summary) + 1
    return spec.model_copy(update={"provenance": [*lines[:at], *notes, *lines[at:]]}), found


def proportion_warning(design: Design) -> str:
    """One line: how the best design departs from the family, and that its accuracy is untested there."""
    s = design.spec
    depths = ", ".join(str(st.depth) for st in s.stages)
    channels = ", ".join(str(st.channels) for st in s.stages)
    return (f"design #1 (depths {depths}; channels {channels}; {format_in_unit(design.macs, 'macs')} MACs) is far "
            f"from the CMT family's proportions: {'; '.join(design.departures)}. The paper trained only the "
            "family: its accuracy is untested this far from it.")
