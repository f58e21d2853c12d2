"""`cmt-gen check`: parameters and MACs of specs against Table 2 or their own budget.

Thin: `cmt_gen.check.budget.check_budget` does the work and returns plain results;
this module renders them. With `--counter analytic` (the default) no torch is
imported, so the command answers in well under a second.
"""

from __future__ import annotations

import typer

from cmt_gen.cli.common import (
    SET_HELP,
    THREADS_HELP,
    ReadableCommand,
    console,
    emit_json,
    err_console,
    family_order,
    literal,
    one_line,
    step_progress,
    use_threads,
    verdict_cell,
)

EXIT_HELP = ("Exit code: 0 all within reference or budget (documented deviations from the paper, such as "
             "CMT-S's paper/code parameter gap, are shown as such and pass unless --strict); 1 any outside "
             "its budget, off the paper without a documented reason, or counters disagree; 2 input errors.")


def register(app: typer.Typer) -> None:
    help_text = f"Check specs' parameters and MACs against Table 2 or their budget. {EXIT_HELP}"
    app.command("check", cls=ReadableCommand, help=help_text)(check)


def check(
    specs: list[str] = typer.Argument(None, help="Bundled spec names (cmt_s) or YAML paths."),
    all_specs: bool = typer.Option(False, "--all", help="Check every bundled spec."),
    counter: str = typer.Option("analytic", "--counter",
                                help="analytic (from the spec, no torch), fvcore (trace the built model) or both."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    force: bool = typer.Option(False, "--force", help="Let fvcore trace a model larger than the free memory."),
    strict: bool = typer.Option(False, "--strict",
                                help="Fail (exit 1) on documented deviations from the paper too."),
    threads: int = typer.Option(None, "--threads", help="With a traced counter: " + THREADS_HELP[0].lower()
                                + THREADS_HELP[1:]),
) -> None:
    from cmt_gen.check.budget import COUNTERS, check_budgets, exit_code
    from cmt_gen.errors import CmtGenError
    from cmt_gen.spec.bundled import bundled_detector_names, bundled_names
    from cmt_gen.spec.detector_loading import is_detector

    if counter not in COUNTERS:
        raise CmtGenError(f"unknown counter {counter!r}; choose one of {', '.join(COUNTERS)}", field="--counter")
    sources = list(specs or [])
    if all_specs:
        sources += [n for n in family_order(bundled_names()) if n not in sources]
        sources += [n for n in bundled_detector_names() if n not in sources]
    if not sources:
        raise CmtGenError("name one or more specs, or pass --all for every bundled spec", source="check")
    detectors = [s for s in sources if is_detector(s)]
    sources = [s for s in sources if s not in detectors]
    threads_note = None
    if counter != "analytic":  # the analytic counter runs no model (and imports no torch)
        import torch

        threads_note = use_threads(threads)
        threads = torch.get_num_threads()
    elif threads is not None:
        from cmt_gen.profile.settings import check_threads

        check_threads(threads, "--threads")
    from cmt_gen.check.detector import check_detectors
    from cmt_gen.spec.detector_loading import load_detector_spec

    detector_specs = [load_detector_spec(s, overrides) for s in detectors]  # input errors before any count
    with step_progress("check") as progress:
        results = check_budgets(sources, counter, overrides=overrides, force=force, progress=progress,
                                threads=threads) if sources else []
        detected = check_detectors(detector_specs, counter, force=force)
    if threads_note:
        err_console.print(literal(threads_note), soft_wrap=True)
    code = exit_code([*results, *detected], strict=strict)
    if as_json:
        _emit(results, counter, code, detected)
    else:
        if results:
            _render(results, counter, code, last=not detected)
        if detected:
            from cmt_gen.cli.check_detectors import render_detectors

            render_detectors(detected, counter, code, EXIT_HELP)
    raise typer.Exit(code)


def _emit(results, counter: str, code: int, detected=()) -> None:
    from cmt_gen.check.budget import DERIVED_TOLERANCE, FVCORE_UNIT, MACS_UNIT, TOLERANCE_RULE
    from cmt_gen.check.detector import DETECTOR_MACS_UNIT
    from cmt_gen.cli.check_detectors import convention_records
    from cmt_gen.cost.tables78 import SWAPPED_NOTE

    emit_json({
        "counter": counter,
        "units": {"macs": MACS_UNIT, "fvcore_total": FVCORE_UNIT, "detector_macs": DETECTOR_MACS_UNIT},
        "tolerance": TOLERANCE_RULE, "derived_tolerance": DERIVED_TOLERANCE,
        "results": [r.as_dict() for r in results],
        "detectors": [r.as_dict() for r in detected], "tables_7_8": SWAPPED_NOTE,
        "conventions": convention_records() if any(r.check("macs") for r in detected) else [],
        "exit_code": code,
    })


def _target(check) -> str:
    """'25.1M ±0.05M': the printed figure and the half-unit of its last digit."""
    from cmt_gen.spec.quantity import parse_quantity

    if check.against == "budget":
        return f"{check.target} (budget)"
    suffix = check.target[-1] if check.target[-1].isalpha() else ""
    half = (check.high - check.low) / 2 / parse_quantity("1" + suffix)
    return f"{check.target} ±{half:g}{suffix}"


def _cells(result, quantity: str) -> tuple[str, str]:
    checks = [c for c in result.checks if c.quantity == quantity]
    if not checks:
        return "-", "-"
    return "\n".join(literal(_target(c)) for c in checks), "\n".join(f"{c.delta_pct:+.2f}%" for c in checks)


def _render(results, counter: str, code: int, last: bool = True) -> None:
    from rich.table import Table

    from cmt_gen.check.budget import DERIVED_TOLERANCE, FVCORE_UNIT, MACS_UNIT, TOLERANCE_RULE

    fvcore = counter in ("fvcore", "both")
    counted = "analytic + fvcore counters" if counter == "both" else f"{counter} counter"
    title = f"Budget check ({counted}) - MACs = multiply-accumulates (Table 2's 'FLOPs')"
    table = Table(title=title, title_justify="left")
    columns = ["spec", "input", "params", "paper / budget", "Δ params", "MACs", "paper / budget", "Δ MACs"]
    if counter == "both":
        columns.append("fvcore MACs")
    if fvcore:
        columns.append("fvcore total")
    columns.append("verdict")
    for column in columns:
        table.add_column(column, justify="left" if column in ("spec", "verdict") else "right")
    for r in results:
        params_target, params_delta = _cells(r, "params")
        macs_target, macs_delta = _cells(r, "macs")
        row = [literal(r.spec), f"{r.height}x{r.width}", f"{r.params:,}", params_target, params_delta,
               f"{r.macs / 1e9:.3f}G", macs_target, macs_delta]
        if counter == "both":
            row.append(f"{r.fvcore_macs / 1e9:.3f}G")
        if fvcore:
            row.append(f"{r.fvcore_total / 1e9:.3f}G")
        row.append(verdict_cell(r))
        table.add_row(*row)
    console.print(table)
    console.print(MACS_UNIT + ".", soft_wrap=True)
    if fvcore:
        console.print(FVCORE_UNIT + ".", soft_wrap=True)
    console.print(f"Tolerance: {TOLERANCE_RULE}; a derived configuration must stay within "
                  f"{DERIVED_TOLERANCE['params']:.0%} (params) and {DERIVED_TOLERANCE['macs']:.0%} (MACs).",
                  soft_wrap=True)
    for r in results:
        for note in r.notes:
            console.print(f"  {one_line(r.spec)}: {one_line(note)}", markup=False, highlight=False, soft_wrap=True)
    if last:
        console.print(f"Exit code {code}. ({EXIT_HELP.removeprefix('Exit code: ')})", soft_wrap=True)
