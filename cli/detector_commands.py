"""`cmt-gen build` and `cmt-gen profile` given a detector spec: the commands hand over to these."""

from __future__ import annotations

from pathlib import Path

from cmt_gen.cli.common import console, emit_json, err_console, fmt_bytes, literal, use_threads


def print_detector_parts(spec, cost) -> None:
    from rich.table import Table

    table = Table(title=f"{literal(spec.name)} ({spec.kind.value}) at {cost.width}x{cost.height} (WxH)",
                  title_justify="left")
    for column in ("part", "params", "MACs"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in cost.parts:
        table.add_row(part.name, f"{part.params:,}", f"{part.macs / 1e9:.2f}G")
    table.add_section()
    table.add_row("total", f"{cost.params:,}", f"{cost.macs / 1e9:.2f}G")
    table.add_row("  of which attention matmuls", "", f"{cost.attention_macs / 1e9:.2f}G")
    console.print(table)
    levels = ", ".join(f"{w}x{h}" for h, w in cost.levels)
    console.print(f"pyramid levels (WxH): {levels}", soft_wrap=True)


def build_detector_command(source: str, overrides, weights: Path | None, output: Path | None, layout: str,
                           as_json: bool, force: bool, threads: int | None) -> None:
    from cmt_gen.cost.detector import detector_cost
    from cmt_gen.errors import CmtGenError
    from cmt_gen.jobs.build import check_output_path
    from cmt_gen.jobs.detector import run_detector_build
    from cmt_gen.spec.detector_loading import detector_files, load_detector_spec

    if layout != "cmt-gen":
        raise CmtGenError("a detector is saved in cmt-gen's layout only (the authors released no detector); "
                          "--layout released applies to backbones", field="--layout")
    spec = load_detector_spec(source, overrides)
    inputs = [weights, *detector_files(source)]
    check_output_path(output, inputs=inputs)
    threads_note = use_threads(threads)
    cost = detector_cost(spec)
    result = run_detector_build(spec, weights=weights, output=output, force=force)  # any refusal is the only line
    if not as_json:
        print_detector_parts(spec, cost)
    if threads_note:
        err_console.print(literal(threads_note), soft_wrap=True)
    if as_json:
        emit_json({**cost.as_dict(), "built_params": result.params, "detections": result.detections,
                   "forward_seconds": result.forward_seconds, "weights": result.weights_loaded,
                   "saved_to": result.saved_to})
        return
    console.print(f"built [bold]{literal(spec.name)}[/]: {result.params:,} parameters (analytic count agrees)")
    if result.weights_loaded:
        console.print(f"loaded backbone weights from {literal(result.weights_loaded)}; FPN and heads start fresh")
    console.print(f"forward pass on one {cost.width}x{cost.height} image: {result.detections[0]} detections above "
                  "torchvision's 0.05 score threshold (fresh heads score lower) in "
                  f"{result.forward_seconds * 1000:.0f} ms")
    if result.saved_to:
        console.print(f"saved weights to {literal(result.saved_to)}")


def profile_detectors_command(sources: list[str], overrides, device: str, batch_size: int | None,
                              threads: int | None, warmup: int | None, iters: int | None, repeats: int | None,
                              json_path: Path | None, force: bool) -> None:
    from rich.table import Table

    from cmt_gen.files import check_output_target
    from cmt_gen.jobs.detector import DEFAULT_BATCHES, profile_detector
    from cmt_gen.profile.output import check_output_path
    from cmt_gen.spec.detector_loading import detector_files, load_detector_spec

    specs = [load_detector_spec(s, overrides) for s in sources]
    json_file = None
    if json_path is not None and str(json_path) != "-":
        inputs = [f for s in sources for f in detector_files(s)]
        json_file = check_output_path(check_output_target(json_path, inputs=inputs), ".json")
    threads_note = use_threads(threads)
    batches = (batch_size,) if batch_size is not None else DEFAULT_BATCHES
    records = []
    for spec in specs:
        records += profile_detector(spec, device, batches, warmup=warmup, iters=iters, repeats=repeats, force=force)
    table = Table(title="Detectors, eval mode, whole pipeline (normalise, backbone, FPN, heads, NMS)",
                  title_justify="left")
    for column in ("spec", "kind", "input (WxH)", "device", "batch", "images/s", "s/call", "peak memory"):
        table.add_column(column, justify="left" if column in ("spec", "kind", "device") else "right")
    for r in records:
        peak = fmt_bytes(r.peak_bytes) if r.peak_bytes is not None else "n/a"
        table.add_row(literal(r.spec), r.kind, f"{r.width}x{r.height}", r.device, str(r.batch),
                      f"{r.images_per_s:.2f}", f"{r.seconds_per_call:.2f}", peak)
    (err_console if json_path is not None and str(json_path) == "-" else console).print(table)
    if threads_note:
        err_console.print(literal(threads_note), soft_wrap=True)
    payload = {"detectors": [r.as_dict() for r in records]}
    if json_file is not None:
        import json

        from cmt_gen.files import write_atomic

        write_atomic(json_file, json.dumps(payload, indent=2) + "\n")
        err_console.print(f"wrote {literal(json_file)}")
    elif json_path is not None:
        emit_json(payload)
