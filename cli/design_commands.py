"""`new`, `design`, `sample` and `compare`: custom CMT variants, torch-free.

Every command counts with the analytic counter, so each starts and answers
in about a second; specs and sample files are validated, then written
atomically.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cmt_gen.cli.common import (
    SET_HELP,
    ReadableCommand,
    console,
    emit_json,
    err_console,
    fmt_delta,
    fmt_macs,
    fmt_params,
    literal,
)

DIVISOR_HELP = ("Channels become multiples of lcm(heads, DIVISOR); 8 suits tensor cores. A width factor of "
                "exactly 1 keeps the base's channels (CMT's 46, 52, 76 are not multiples of 8).")
RANGE_HELP = "a target, met within --tolerance, or a range MIN..MAX (either end may be left out)"
CALIBRATION_HELP = "Latency model of the target device, written by cmt-gen calibrate (JSON)."


def register(app: typer.Typer) -> None:
    app.command("new", cls=ReadableCommand)(new)
    app.command("design", cls=ReadableCommand)(design)
    app.command("sample", cls=ReadableCommand)(sample)
    app.command("compare", cls=ReadableCommand)(compare)


# ---------------------------------------------------------------- new

def new(
    name: str = typer.Argument(..., help="Name of the new spec."),
    base: str = typer.Option(..., "--from", help="Base spec: bundled name (cmt_s) or YAML path."),
    width: float = typer.Option(1.0, "--width", help="Width (channels) factor, e.g. 1.25."),
    depth: float = typer.Option(1.0, "--depth", help="Depth (blocks per stage) factor, e.g. 1.2."),
    resolution: str = typer.Option(None, "--resolution",
                                   help="Input side in pixels (288, must be legal) or a factor (1.125x)."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP + " Applied after scaling."),
    divisor: int = typer.Option(8, "--divisor", help=DIVISOR_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="YAML file to write (atomically)."),
) -> None:
    """Compound-scale a spec (width, depth, resolution) into a new, legal, validated spec."""
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.design.scaling import resolve_base, scale_spec
    from cmt_gen.design.spec_writer import base_files, check_spec_path, write_spec

    spec, _ = resolve_base(base)
    check_spec_path(output, inputs=base_files(base))
    factor, size = _resolution_argument(resolution)
    scaled = scale_spec(base, width, depth, factor, size=size, divisor=divisor, name=name, overrides=overrides)
    write_spec(scaled, output)
    before, after = analytic_cost(spec), analytic_cost(scaled)
    table = Table(title=f"{literal(scaled.name)} from {literal(spec.name)}", title_justify="left")
    for column in ("", literal(spec.name), literal(scaled.name), "change"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("resolution", str(spec.resolution), str(scaled.resolution),
                  _ratio([spec.resolution], [scaled.resolution]))
    table.add_row("stem channels", str(spec.stem.channels), str(scaled.stem.channels),
                  _ratio([spec.stem.channels], [scaled.stem.channels]))
    table.add_row("channels", _join(s.channels for s in spec.stages), _join(s.channels for s in scaled.stages),
                  _ratio([s.channels for s in spec.stages], [s.channels for s in scaled.stages]))
    before_depth, after_depth = sum(s.depth for s in spec.stages), sum(s.depth for s in scaled.stages)
    table.add_row("depths", _join(s.depth for s in spec.stages), _join(s.depth for s in scaled.stages),
                  "same" if before_depth == after_depth else f"{after_depth - before_depth:+d} blocks")
    table.add_row("expansion", _join(f"{s.expansion:g}" for s in spec.stages),
                  _join(f"{s.expansion:g}" for s in scaled.stages),
                  _ratio([s.expansion for s in spec.stages], [s.expansion for s in scaled.stages]))
    table.add_row("params", f"{before.params:,}", f"{after.params:,}", fmt_delta(after.params, before.params))
    table.add_row("MACs", fmt_macs(before.macs, 3), fmt_macs(after.macs, 3), fmt_delta(after.macs, before.macs))
    console.print(table)
    console.print(f"wrote {literal(str(output))} (validated; provenance lists the base and every change)")


def _resolution_argument(text: str | None) -> tuple[float, int | None]:
    """`288` -> pixels; `1.125x` -> factor."""
    from cmt_gen.design.scaling import DesignError

    if text is None:
        return 1.0, None
    value = text.strip().lower()
    try:
        if value.endswith("x"):
            return float(value[:-1]), None
        return 1.0, int(value)
    except ValueError:
        raise DesignError(f"write --resolution as pixels (288) or a factor (1.125x), got {text!r}",
                          field="--resolution") from None


def _ratio(before: list[float], after: list[float]) -> str:
    """'same', one factor ('x1.125') or the range of per-entry factors ('x1.14..x1.16')."""
    factors = sorted({round(b / a, 3) for a, b in zip(before, after, strict=False)})
    if len(before) != len(after):
        return f"{len(after) - len(before):+d} stages"
    if factors == [1.0]:
        return "same"
    return f"x{factors[0]:g}" if len(factors) == 1 else f"x{factors[0]:g}..x{factors[-1]:g}"


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


# ---------------------------------------------------------------- design

def design(
    params: str = typer.Option(None, "--params", help=f"Parameters, e.g. 74.7M or 20M..30M: {RANGE_HELP}."),
    macs: str = typer.Option(None, "--macs", help=f"MACs (Table 2's FLOPs), e.g. 19.5G or ..6G: {RANGE_HELP}."),
    resolution: str = typer.Option(None, "--resolution",
                                   help="Input side in pixels (288) or a range (224..320); "
                                        "default: 0.5x-2x the base's."),
    base: str = typer.Option(None, "--from", help="Base spec; default: the bundled spec nearest the budget."),
    top: int = typer.Option(5, "--top", help="How many ranked designs to show."),
    tolerance: str = typer.Option(None, "--tolerance",
                                  help="Slack of a single-value target: 1% (both) or 1%,2% (params, MACs). "
                                       "Default 1% params, 2% MACs."),
    divisor: int = typer.Option(8, "--divisor", help=DIVISOR_HELP),
    name: str = typer.Option(None, "--name", help="Name of the written spec (default: the file's stem)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the best design here (YAML, atomically)."),
    as_json: bool = typer.Option(False, "--json", help="Print the ranked designs as JSON."),
    throughput: str = typer.Option(None, "--throughput",
                                   help=f"Images/s predicted on the calibrated device, e.g. 40 or 30..: {RANGE_HELP}."),
    latency: str = typer.Option(None, "--latency",
                                help=f"Predicted latency per batch, e.g. 25ms or ..25ms: {RANGE_HELP}."),
    calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    force: bool = typer.Option(False, "--force", help="Use a calibration made on another machine or torch."),
) -> None:
    """Search width, depths, resolution and expansion for specs that meet a params/MACs/speed budget.

    Exits 1 (showing the nearest designs) when no legal spec meets the budget,
    2 when the budget is impossible or malformed.
    """
    from cmt_gen.design.search import design_specs
    from cmt_gen.design.spec_writer import base_files, check_spec_path, write_spec

    if name is not None and not name.strip():
        from cmt_gen.design.scaling import DesignError

        raise DesignError("a spec needs a name that is not blank", field="--name")
    if output is not None:
        check_spec_path(output, inputs=[*base_files(base), calibration])
    result = design_specs(base, params=params, macs=macs, resolution=resolution, top=top, tolerance=tolerance,
                          divisor=divisor, name=name or (output.stem if output is not None else None),
                          throughput=throughput, latency=latency, calibration=calibration, force=force)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {literal(warning)}", soft_wrap=True)
    if as_json:
        emit_json(_design_json(result))
    else:
        _print_designs(result)
    if not result.feasible:
        budget = ", ".join(f"{c.label} {c.describe()}" for c in result.constraints)
        err_console.print(f"[bold red]no legal spec[/] around {literal(result.base_label)} meets {literal(budget)}; "
                          "the table shows the nearest designs. Widen --tolerance, give a range, or change "
                          "--resolution / --from.", soft_wrap=True)
        raise typer.Exit(1)
    if output is not None:
        write_spec(result.best.spec, output)
        if not as_json:
            console.print(f"wrote the best design to {literal(str(output))} (validated)")


def _design_json(result) -> dict:
    return {
        "base": result.base_label, "feasible": result.feasible, "evaluated": result.evaluated,
        "seconds": round(result.seconds, 3),
        "budget": {c.quantity: {"min": c.lo, "max": None if c.hi == float("inf") else c.hi, "target": c.target}
                   for c in result.constraints},
        "designs": [{"rank": k, "params": d.params, "macs": d.macs, "meets": d.meets, "score": round(d.score, 4),
                     "resolution": d.spec.resolution, "stem": d.spec.stem.channels,
                     "channels": [s.channels for s in d.spec.stages], "depths": [s.depth for s in d.spec.stages],
                     "expansion": [s.expansion for s in d.spec.stages], "family_departures": d.departures,
                     **_speed_json(d, result.batch_size)}
                    for k, d in enumerate(result.designs, 1)],
    }


def _speed_json(design, batch: int | None) -> dict:
    if design.seconds is None:
        return {}
    return {"predicted_latency_ms": design.seconds * 1000, "predicted_images_per_s": batch / design.seconds,
            "batch_size": batch}


def _print_designs(result) -> None:
    budget = ", ".join(f"{c.label} {c.describe()}" for c in result.constraints)
    sizes = result.space.resolutions
    where = f"{sizes[0]} px" if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]} px"
    console.print(f"budget: {budget}; base {literal(result.base_label)}; {where}; "
                  f"{result.evaluated:,} designs evaluated in {result.seconds:.2f} s")
    title = "designs meeting the budget, best first" if result.feasible else "nearest designs (none meets the budget)"
    table = Table(title=title, title_justify="left")
    speed = result.batch_size is not None
    columns = ["#", "px", "stem", "channels", "depths", "E", "params", "vs budget", "MACs", "vs budget"]
    if speed:
        columns += [f"img/s (batch {result.batch_size})", "ms/batch", "vs budget"]
    for column in (*columns, "score"):
        table.add_column(column, justify="right")
    for k, d in enumerate(result.designs, 1):
        s = d.spec
        cells = [str(k), str(s.resolution), str(s.stem.channels), _join(st.channels for st in s.stages),
                 _join(st.depth for st in s.stages), f"{s.stages[0].expansion:g}", fmt_params(d.params),
                 d.delta(result.params), fmt_macs(d.macs, 3), d.delta(result.macs)]
        if speed:
            cells += [f"{result.batch_size / d.seconds:,.1f}", f"{d.seconds * 1000:,.1f}",
                      d.delta(result.speed, result.batch_size)]
        table.add_row(*cells, f"{d.score:.3f}", style=None if d.meets else "red")
    console.print(table)
    if speed:
        console.print("img/s and ms/batch are predicted from the calibration (cmt-gen predict --measure checks them).")
    console.print("score: lower is better (distance from the base's proportions plus budget fit; a design "
                  "outside the budget adds 100 x its relative miss); MACs = Table 2's FLOPs.")


# ---------------------------------------------------------------- sample

def sample(
    n: int = typer.Option(..., "--n", help="How many distinct specs to draw."),
    params: str = typer.Option(None, "--params", help=f"Keep specs with these parameters: {RANGE_HELP}."),
    macs: str = typer.Option(None, "--macs", help=f"Keep specs with these MACs: {RANGE_HELP}."),
    resolution: str = typer.Option(None, "--resolution",
                                   help="Pixels (224) or a range (192..288); default: the base's."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same file."),
    base: str = typer.Option(None, "--from", help="Base spec; default: the bundled spec nearest the budget."),
    width_range: str = typer.Option("0.5..2", "--width-range", help="Width factors, log-uniform."),
    depth_range: str = typer.Option("0.5..2", "--depth-range", help="Per-stage depth factors, log-uniform."),
    expansion_range: str = typer.Option("2..6", "--expansion-range", help="Expansion ratios, uniform on a 0.25 grid."),
    tolerance: str = typer.Option(None, "--tolerance", help="Slack of single-value targets (default 1%,2%)."),
    divisor: int = typer.Option(8, "--divisor", help=DIVISOR_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file: one spec and its cost per line."),
    calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP + " Adds predicted speed "
                                                                                    "to each row."),
    force: bool = typer.Option(False, "--force", help="Use a calibration made on another machine or torch."),
) -> None:
    """Draw random legal specs around a base, keep those within the budget, write JSONL."""
    from cmt_gen.design.sampling import sample_specs
    from cmt_gen.design.scaling import DesignError
    from cmt_gen.design.speed import checked_calibration
    from cmt_gen.files import write_atomic

    if output.suffix.lower() not in (".jsonl", ".ndjson"):
        raise DesignError(f"samples are written as .jsonl, not {output.suffix or 'no suffix'}", source=str(output))
    from cmt_gen.design.spec_writer import base_files
    from cmt_gen.files import check_output_target

    check_output_target(output, inputs=[*base_files(base), calibration])
    cal, warnings = checked_calibration(calibration, force)
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {literal(warning)}", soft_wrap=True)
    result = sample_specs(base, n, seed=seed, params=params, macs=macs, resolution=resolution, tolerance=tolerance,
                          width_range=_multipliers(width_range, "--width-range"),
                          depth_range=_multipliers(depth_range, "--depth-range"),
                          expansion_range=_multipliers(expansion_range, "--expansion-range"), divisor=divisor,
                          calibration=cal)
    if not result.complete:
        budget = ", ".join(f"{c.label} {c.describe()}" for c in result.constraints) or "no budget"
        err_console.print(f"[bold red]only {len(result.samples)} of {n}[/] distinct specs around "
                          f"{literal(result.base_label)} met {literal(budget)} in {result.tries:,} draws; nothing "
                          "written. Widen the budget or the ranges.", soft_wrap=True)
        raise typer.Exit(1)
    write_atomic(output, result.jsonl())
    table = Table(title=f"{n} specs from {literal(result.base_label)}, seed {seed} ({result.tries:,} draws)",
                  title_justify="left")
    columns = ["name", "px", "channels", "depths", "E", "params", "MACs"] + (["img/s (predicted)"] if cal else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "name" else "right")
    for s in result.samples[:10]:
        speed = [f"{s.speed['images_per_s']:,.1f}"] if s.speed else []
        table.add_row(literal(s.spec.name), str(s.spec.resolution), _join(st.channels for st in s.spec.stages),
                      _join(s.depths), f"{s.expansion:g}", fmt_params(s.params), fmt_macs(s.macs), *speed)
    if n > 10:
        table.add_row(f"... {n - 10} more", *[""] * (len(columns) - 1))
    console.print(table)
    console.print(f"wrote {literal(str(output))}: {n} validated specs, one JSON record per line")


def _multipliers(text: str, field: str) -> tuple[float, float]:
    from cmt_gen.design.scaling import DesignError

    low, sep, high = text.partition("..")
    try:
        if not sep:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise DesignError(f"write a range of factors as 0.5..2, got {text!r}", field=field) from None


# ---------------------------------------------------------------- compare

def compare(
    specs: list[str] = typer.Argument(..., help="Spec names or YAML paths; the first is the reference column."),
    profile: Path = typer.Option(None, "--profile", help="Results of `cmt-gen profile --json` (images/s)."),
    plot: Path = typer.Option(None, "--plot", help="Save MACs vs params with Table 2's models (.png/.svg/.pdf)."),
    only_diff: bool = typer.Option(False, "--diff", help="Show only the rows that differ."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP + " Applied to every spec."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    calibration: Path = typer.Option(None, "--calibration", help=CALIBRATION_HELP + " With --plot, adds a "
                                     "panel of predicted images/s against MACs (measured where --profile has it)."),
    force: bool = typer.Option(False, "--force", help="Use a calibration made on another machine or torch."),
) -> None:
    """Specs side by side, stage by stage, with differences highlighted; optionally a plot."""
    from cmt_gen.design.compare import compare_specs, table2_points
    from cmt_gen.design.speed import checked_calibration

    if plot is not None:
        from cmt_gen.design.plotting import check_plot_path
        from cmt_gen.spec.loading import spec_files

        check_plot_path(plot, inputs=[profile, calibration, *(f for s in specs for f in spec_files(s))])
    cal, warnings = checked_calibration(calibration, force)
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {literal(warning)}", soft_wrap=True)
    result = compare_specs(specs, profile, overrides)
    if as_json:
        record = result.as_dict()
        if only_diff:
            record["rows"] = [row for row in record["rows"] if row["differs"]]
        emit_json(record)
    else:
        _print_comparison(result, only_diff)
    if plot is not None:
        from cmt_gen.design.compare import speed_title
        from cmt_gen.design.plotting import PlotPoint, plot_cost_map

        speeds = result.throughput or [None] * len(result.specs)
        points = [PlotPoint(spec.name, cost.params, cost.macs, t.images_per_second if t else None, spec.resolution,
                            bool(t and t.noisy))
                  for spec, cost, t in zip(result.specs, result.costs, speeds, strict=True)]
        from cmt_gen.design.speed_panel import speed_panel

        panel = speed_panel(result.specs, result.costs, speeds, cal, _family_speeds(profile))
        plot_cost_map(plot, points, table2_points(), speed_title=speed_title(speeds), speed=panel)
        if not as_json:
            console.print(f"saved plot to {literal(str(plot))}")


def _family_speeds(profile: Path | None) -> dict:
    """Measured speeds (`Throughput`: images/s, noisy mark, device) of bundled variants in a profile file."""
    if profile is None:
        return {}
    from cmt_gen.design.compare import load_profile
    from cmt_gen.spec.bundled import bundled_names

    found = load_profile(profile)
    return {name: found[name] for name in bundled_names() if name in found}


def _print_comparison(result, only_diff: bool) -> None:
    table = Table(title="comparison (yellow: differs from the first spec)", title_justify="left")
    table.add_column("part")
    table.add_column("field")
    for label in result.labels:
        table.add_column(literal(label), justify="right")
    section = None
    for row in result.rows:
        if only_diff and not row.differs:
            continue
        if section is not None and row.section != section:
            table.add_section()
        part = row.section if row.section != section else ""
        section = row.section
        cells = [literal(v) if k == 0 or not row.differs_from_first(k) else f"[bold yellow]{literal(v)}[/]"
                 for k, v in enumerate(row.values)]
        field = f"[bold]{literal(row.label)}[/]" if row.differs else literal(row.label)
        table.add_row(part, field, *cells)
    console.print(table)
    if result.noisy:
        console.print(f"~ noisy: cmt-gen profile marked {literal(', '.join(result.noisy))} noisy (its repeats still "
                      "spread more than its limit after extending the run); profile again on a quieter machine "
                      "before trusting the difference.", soft_wrap=True)
    if result.throughput and not any(result.throughput):
        err_console.print("no profile record matched these specs' names", soft_wrap=True)
