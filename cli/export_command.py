"""`cmt-gen export`: the deploy form as ONNX, TorchScript or a torch.export program, checked on reload."""

from __future__ import annotations

from pathlib import Path

import typer

from cmt_gen.cli.common import (
    SET_HELP,
    THREADS_HELP,
    ReadableCommand,
    StepReport,
    console,
    emit_json,
    err_console,
    literal,
    use_threads,
)

FORMAT_HELP = "onnx (run back with onnxruntime), torchscript, or program (torch.export, .pt2)."


def register(app: typer.Typer) -> None:
    app.command("export", cls=ReadableCommand)(export)


def export(
    spec: str = typer.Argument(..., help="Bundled spec name (cmt_s) or path to a YAML spec."),
    fmt: str = typer.Option(..., "--format", "-f", help=FORMAT_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="File to write (atomically)."),
    weights: Path = typer.Option(None, "--weights", help="Checkpoint to load strictly (ours or the released layout)."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest |file - eager| / max |eager| accepted."),
    threads: int = typer.Option(None, "--threads", help=THREADS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON record instead of text."),
) -> None:
    """Write the deploy form (dynamic batch, height, width), reload it, run two input sizes, compare
    with eager; exit 1 when the difference exceeds --tolerance."""

    from cmt_gen.errors import CmtGenError
    from cmt_gen.export.formats import FORMATS
    from cmt_gen.jobs.export import export_spec
    from cmt_gen.spec.loading import load_spec, spec_files

    if fmt not in FORMATS:
        raise CmtGenError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", field="--format")
    threads_note = use_threads(threads)
    resolved = load_spec(spec, overrides)
    with StepReport("exporting") as progress:
        result = export_spec(resolved, fmt, output, weights=weights, tolerance=tolerance, threads=threads,
                             inputs=spec_files(spec), progress=progress)
    if as_json:
        emit_json({"spec": resolved.name, "format": fmt, "path": result.path, "form": "deploy",
                   "tolerance": tolerance, "passed": result.passed,
                   "checks": [{"shape": list(c.shape), "max_abs_diff": c.max_abs_diff,
                               "max_rel_diff": c.max_rel_diff} for c in result.checks]})
    else:
        console.print(f"wrote the deploy form of [bold]{literal(resolved.name)}[/] as {fmt} to {literal(result.path)} "
                      "(dynamic batch, height, width)")
        for c in result.checks:
            console.print(f"  reloaded, input {tuple(c.shape)}: max |file - eager| = {c.max_abs_diff:.2e} "
                          f"({c.max_rel_diff:.2e} of max |eager|)")
        verdict = "[green]within[/]" if result.passed else "[bold red]exceeds[/]"
        console.print(f"{verdict} tolerance {tolerance:g}")
    if threads_note:
        err_console.print(literal(threads_note), soft_wrap=True)
    if not result.passed:
        raise typer.Exit(1)
