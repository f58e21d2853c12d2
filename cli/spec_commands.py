"""`build`, `validate`, `list` and `schema`: specs in, tables and models out."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cmt_gen.cli.common import (
    SET_HELP,
    THREADS_HELP,
    ReadableCommand,
    console,
    emit_json,
    err_console,
    family_order,
    fmt_macs,
    fmt_params,
    literal,
    use_threads,
)


def register(app: typer.Typer) -> None:
    app.command("build", cls=ReadableCommand)(build)
    app.command("validate", cls=ReadableCommand)(validate)
    app.command("list", cls=ReadableCommand)(list_specs)
    app.command("schema", cls=ReadableCommand)(schema)


def build(
    spec: str = typer.Argument(..., help="Bundled spec name (cmt_s) or path to a YAML spec."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    weights: Path = typer.Option(None, "--weights", help="Checkpoint to load strictly (ours or the released layout)."),
    output: Path = typer.Option(None, "--output", "-o", help="Save the weights (.pt, or .safetensors)."),
    layout: str = typer.Option("cmt-gen", "--layout", help="Key names of the saved weights: cmt-gen (ours) or "
                                                            "released (the authors' cmt.py), to share a model."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON record instead of tables."),
    force: bool = typer.Option(False, "--force", help="Build even when the estimated memory exceeds what is free."),
    threads: int = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Validate, build, print the stage table, run one forward pass, optionally save weights."""
    from cmt_gen.cost.summary import summarize
    from cmt_gen.jobs.build import check_build_fits, check_layout, check_output_path, run_build
    from cmt_gen.spec.detector_loading import is_detector
    from cmt_gen.spec.loading import load_spec, spec_files

    check_layout(layout)
    if is_detector(spec):
        from cmt_gen.cli.detector_commands import build_detector_command

        build_detector_command(spec, overrides, weights, output, layout, as_json, force, threads)
        return
    resolved = load_spec(spec, overrides)
    check_output_path(output, inputs=[*spec_files(spec), weights])
    check_build_fits(resolved, force=force)  # before any output: a refusal is the only line printed
    threads_note = use_threads(threads)
    summary = summarize(resolved)
    if not as_json:
        print_stage_table(summary)
    result = run_build(resolved, weights=weights, output=output, force=force, layout=layout)
    if result.params != summary.cost.params:  # the two descriptions must never drift
        raise RuntimeError(f"built model has {result.params} parameters, analytic count {summary.cost.params}")
    if threads_note:
        err_console.print(literal(threads_note), soft_wrap=True)
    if as_json:
        emit_json({**summary.as_dict(), "built_params": result.params,
                   "output_shape": list(result.output_shape), "forward_seconds": result.forward_seconds,
                   "weights": result.weights_loaded, "weights_note": result.weights_note,
                   "saved_to": result.saved_to})
        return
    console.print(
        f"built [bold]{literal(resolved.name)}[/]: {result.params:,} parameters "
        f"(analytic count agrees), {summary.cost.macs / 1e9:.3f} GMACs at {resolved.resolution}x{resolved.resolution}"
    )
    if result.weights_loaded:
        console.print(f"loaded weights strictly from {literal(result.weights_loaded)}")
    if result.weights_note:
        console.print(f"note: {literal(result.weights_note)}")
    console.print(f"forward pass on a dummy batch: output {tuple(result.output_shape)} "
                  f"in {result.forward_seconds * 1000:.0f} ms")
    if result.saved_to:
        console.print(f"saved weights to {literal(result.saved_to)}"
                      + (" in the authors' released layout" if layout == "released" else ""))


def print_stage_table(summary) -> None:
    spec = summary.spec
    table = Table(title=f"{literal(spec.name)} at {spec.resolution}x{spec.resolution}", title_justify="left")
    for column in ("part", "feature", "tokens", "K/V tokens", "channels", "depth", "heads", "reduction",
                   "params", "MACs"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for row in summary.rows:
        is_stage = row.part.startswith("stage")
        table.add_row(
            row.part, f"{row.height}x{row.width}",
            f"{row.tokens:,}" if is_stage else "-", f"{row.kv_tokens:,}" if is_stage else "-",
            str(row.channels), str(row.depth), str(row.heads) if is_stage else "-",
            str(row.reduction) if is_stage else "-", f"{row.params:,}", fmt_macs(row.macs, 3),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", str(sum(s.depth for s in spec.stages)), "", "",
                  f"{summary.cost.params:,}", fmt_macs(summary.cost.macs, 3))
    console.print(table)
    console.print("MACs = multiply-accumulates of convolutions, linear layers and attention matmuls "
                  "(what Table 2 calls FLOPs).")


def validate(
    specs: list[str] = typer.Argument(..., help="Spec names or YAML paths."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Check specs against the schema and the design rules (no torch needed); lists every problem, one a line."""
    from cmt_gen.errors import CmtGenError, SpecError
    from cmt_gen.spec.detector_loading import is_detector, load_detector_spec
    from cmt_gen.spec.loading import load_spec

    problems = []
    for source in specs:
        try:
            if is_detector(source):
                detector = load_detector_spec(source, overrides)
                console.print(f"[green]ok[/] {literal(source)}: {literal(detector.name)}, {detector.kind.value} on "
                              f"{literal(detector.backbone.name)}, {detector.input.width}x{detector.input.height}")
                continue
            resolved = load_spec(source, overrides)
        except CmtGenError as exc:  # go on: one run reports every problem of every spec
            problems += exc.problems
            continue
        console.print(f"[green]ok[/] {literal(source)}: {literal(resolved.name)}, {len(resolved.stages)} stages, "
                      f"{resolved.resolution}x{resolved.resolution}")
    if problems:
        raise SpecError.of(problems, every_line=True)


def list_specs(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Bundled specs with the paper's Table 2 figures and our analytic counts."""
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.spec.bundled import bundled_names
    from cmt_gen.spec.loading import load_spec

    records = []
    for name in family_order(bundled_names()):
        spec = load_spec(name)
        cost = analytic_cost(spec)
        ref = spec.reference
        records.append({
            "name": name, "resolution": spec.resolution, "params": cost.params, "macs": cost.macs,
            "paper_params": ref.params if ref else None, "paper_macs": ref.macs if ref else None,
            "paper_top1": ref.top1 if ref else None, "paper_throughput": ref.throughput if ref else None,
            "description": spec.description,
        })
    if as_json:
        emit_json(records)
        return
    table = Table(title="Bundled specs (paper = CMT Table 2)", title_justify="left")
    from cmt_gen.cost.table2 import THROUGHPUT_LABEL

    for column in ("name", "resolution", "params", "paper params", "MACs", "paper FLOPs (MACs)",
                   "paper top-1", THROUGHPUT_LABEL):
        table.add_column(column, justify="left" if column == "name" else "right")
    for r in records:
        table.add_row(literal(r["name"]), str(r["resolution"]), fmt_params(r["params"]),
                      literal(r["paper_params"] or "-"),
                      fmt_macs(r["macs"]), literal(r["paper_macs"] or "-"),
                      f"{r['paper_top1']}%" if r["paper_top1"] else "-",
                      str(r["paper_throughput"] or "-"))
    console.print(table)
    _list_detectors()


def _list_detectors() -> None:
    """The bundled detector specs, counted at their input size, beside Tables 7 and 8 (swapped headers read right)."""
    from cmt_gen.cost.detector import detector_cost
    from cmt_gen.cost.hook_convention import detector_hook_count
    from cmt_gen.spec.bundled import bundled_detector_names
    from cmt_gen.spec.detector_loading import load_detector_spec

    table = Table(title="Bundled detectors (paper = CMT Tables 7 and 8)", title_justify="left")
    for column in ("name", "kind", "backbone", "input (WxH)", "params", "paper params", "MACs", "mmcv FLOPs",
                   "paper FLOPs"):
        table.add_column(column, justify="left" if column in ("name", "kind", "backbone") else "right")
    for name in bundled_detector_names():
        spec = load_detector_spec(name)
        cost = detector_cost(spec)
        ref = spec.reference
        table.add_row(literal(name), spec.kind.value, literal(spec.backbone.name), f"{cost.width}x{cost.height}",
                      fmt_params(cost.params), literal(ref.params or "-") if ref else "-",
                      f"{fmt_macs(cost.macs)} ({fmt_macs(cost.macs_without_attention)} w/o attention)",
                      fmt_macs(detector_hook_count(spec)), literal(ref.macs or "-") if ref else "-")
    console.print(table)


def schema(output: Path = typer.Option(None, "--output", "-o", help="Write to a file instead of stdout.")) -> None:
    """JSON Schema of the spec format, for editor completion."""
    from cmt_gen.spec.schema import CMTSpec

    payload = CMTSpec.model_json_schema()
    payload["properties"]["extends"] = {
        "type": "string", "description": "Bundled spec name or path this spec starts from.",
    }
    emit_json(payload, output)
