"""`calibrate` and `predict`: a device's latency model for CMT blocks, and specs' predicted speed.

`calibrate` imports torch inside the command; `predict` runs without torch
unless `--measure` asks for the profiler's numbers beside the predictions.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cmt_gen.cli.common import (
    DEVICE_HELP,
    SET_HELP,
    ReadableCommand,
    StepReport,
    console,
    emit_json,
    err_console,
    fmt_macs,
    fmt_params,
    literal,
)


def register(app: typer.Typer) -> None:
    app.command("calibrate", cls=ReadableCommand)(calibrate)
    app.command("predict", cls=ReadableCommand)(predict)


def _check_json_path(path: Path | None, what: str, inputs: list | None = None) -> None:
    """A .json output that is a regular file or a new path, and none of the command's inputs."""
    from cmt_gen.files import check_output_target

    if path is not None:
        check_output_target(path, inputs=inputs or [], suffixes=(".json",), what=what)


def calibrate(
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
    precision: str = typer.Option(None, "--precision", help="fp32 (default), fp16, bf16 or amp."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Images per call (default: by device, as "
                                                                      "cmt-gen profile)."),
    threads: int = typer.Option(None, "--threads", help="torch intra-op threads (CPU work)."),
    form: str = typer.Option("deploy", "--form", help="deploy (what `profile` measures by default) or as-built."),
    allocator: str = typer.Option("auto", "--allocator", help="Host memory policy timed, as for `profile`: "
                                                              "retain or system (auto: retain on Linux CPU)."),
    blocks: int = typer.Option(None, "--blocks", help="CMT blocks timed per stage position (default 24; more: a "
                                                      "finer fit)."),
    min_time: float = typer.Option(None, "--min-time", help="Seconds per timed repeat of each block (default 0.15)."),
    networks: int = typer.Option(None, "--networks", help="Whole networks drawn over the design space and timed "
                                                          "into the fit (default 24; 0: parts alone)."),
    part_passes: int = typer.Option(None, "--part-passes", help="Times each part is timed, each at its own place "
                                                                "in the run (default 1; each more adds about "
                                                                "a minute on a 2-core CPU)."),
    max_drift: float = typer.Option(None, "--max-drift", help="Refuse the run if the machine's speed moves more "
                                                              "than this fraction while calibrating (default "
                                                              "0.15)."),
    channel_block: int = typer.Option(None, "--channel-block", help="Channels the device's kernels work on at "
                                                                    "once (default: from the CPU's vector width, "
                                                                    "16 on AVX-512, 8 on AVX2; 1 elsewhere)."),
    output: Path = typer.Option(..., "--output", "-o", help="Calibration file to write (JSON, atomically)."),
) -> None:
    """Time CMT's building blocks and whole networks on a device and fit a latency model (about 3 minutes on a
    2-core CPU)."""
    from cmt_gen.latency.calibrate import calibrate as run_calibration
    from cmt_gen.latency.calibration_file import save_calibration

    _check_json_path(output, "a calibration")
    with StepReport("calibrating") as progress:
        calibration = run_calibration(device=device, precision=precision, batch_size=batch_size, threads=threads,
                                      form=form, allocator=allocator, blocks_per_stage=blocks, min_time=min_time,
                                      networks=networks, part_passes=part_passes, max_drift=max_drift,
                                      channel_block=channel_block, progress=progress)
    save_calibration(calibration, output)
    s = calibration.settings
    table = Table(title=f"latency model of {literal(calibration.machine)} ({s.device}, {s.precision}, batch "
                        f"{s.batch_size}, threads {s.threads or 'default'}, {s.form} form, allocator {s.allocator})",
                  title_justify="left")
    for column in ("part", "timed", "left out", "median error", "worst error"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for kind, model in calibration.parts.items():
        table.add_row(kind, str(model.samples), str(model.outliers), f"{model.median_error * 100:.1f}%",
                      f"{model.worst_error * 100:.1f}%")
    console.print(table)
    console.print("left out: at most a tenth of a part's timings, those more than 3x its median error (and over "
                  "10%) off a first fit, taken as disturbed by other work; the fit is redone without them (the "
                  "errors still cover every timing)", soft_wrap=True)
    ratios = sorted(r.measured_seconds / r.parts_seconds for r in calibration.references)
    if ratios:
        console.print(f"network factor {calibration.network_factor:.3f}: the median of whole network / its fitted "
                      f"parts over {len(ratios)} timed networks (from {ratios[0]:.3f} to {ratios[-1]:.3f})")
    capability = calibration.environment.get("cpu_capability") if s.device_type == "cpu" else None
    source = calibration.environment.get("channel_block_source") or (capability and f"cpu capability {capability}")
    console.print(f"{' and '.join(k + 's' for k in calibration.padded_kinds)} counted with channels in whole "
                  f"blocks of {calibration.channel_block}" + (f" ({literal(str(source))})" if source else ""))
    if calibration.drift:
        speeds = [d.seconds * 1000 for d in calibration.drift]
        console.print(f"drift reference (CMT-Ti, timed {len(speeds)} times): {min(speeds):.1f}-{max(speeds):.1f} ms "
                      f"a call; every timing scaled to its median, {calibration.reference_seconds * 1000:.1f} ms")
    console.print(f"wrote {literal(str(output))} in {calibration.seconds:.0f} s (errors: the fit against its own "
                  "timings; cmt-gen predict --measure checks whole networks)")


def predict(
    specs: list[str] = typer.Argument(..., help="Spec names or YAML paths."),
    calibration: Path = typer.Option(..., "--calibration", help="Written by cmt-gen calibrate on this device."),
    measure: bool = typer.Option(False, "--measure", help="Also profile each spec here, with the calibration's "
                                                          "settings, and show the error."),
    json_path: Path = typer.Option(None, "--json", help="Write the rows as a JSON list (atomically)."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    force: bool = typer.Option(False, "--force", help="Use a calibration made on another machine or torch."),
    min_time: float = typer.Option(None, "--min-time", help="With --measure: seconds per timed repeat."),
    precision: str = typer.Option(None, "--precision", help="The precision you will run at (checked against the "
                                                            "calibration's)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="The batch you will run at (checked)."),
    threads: int = typer.Option(None, "--threads", help="The thread count you will run at (checked)."),
) -> None:
    """Predicted batch latency and images/s of specs, from a calibration, without building them."""
    from cmt_gen.errors import CmtGenError
    from cmt_gen.latency.calibration_file import check_compatible, load_calibration
    from cmt_gen.latency.evaluate import measure_rows, predict_rows
    from cmt_gen.latency.predict import run_settings
    from cmt_gen.profile.settings import PRECISIONS
    from cmt_gen.spec.loading import load_spec, spec_files

    if precision is not None and precision not in PRECISIONS:
        raise CmtGenError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}", field="--precision")
    for flag, value in (("--batch-size", batch_size), ("--threads", threads)):
        if value is not None and value < 1:
            raise CmtGenError(f"must be at least 1, got {value}", field=flag)
    _check_json_path(json_path, "the rows", inputs=[calibration, *(f for s in specs for f in spec_files(s))])
    cal = load_calibration(calibration)
    warned = check_compatible(cal, source=str(calibration), precision=precision, batch_size=batch_size,
                              threads=threads, force=force)
    for warning in warned:
        err_console.print(f"[yellow]warning:[/] {literal(warning)}", soft_wrap=True)
    rows = predict_rows([load_spec(name, overrides) for name in specs], cal)
    if measure:
        with console.status("measuring") as status:
            more = measure_rows(rows, cal, min_time=min_time, force=force, source=str(calibration),
                                progress=lambda i, what: status.update(
                                    f"measuring {rows[i].name if i >= 0 else ''}: {literal(what)}"))
        for warning in more:
            if warning not in warned:
                err_console.print(f"[yellow]warning:[/] {literal(warning)}", soft_wrap=True)
    held = run_settings(cal)
    if json_path is not None:
        emit_json([{**r.as_dict(), "settings": held} for r in rows], json_path)
    s = cal.settings
    table = Table(title=f"predicted on {literal(cal.machine)} ({s.device}, {s.precision}, batch {s.batch_size}, "
                        f"threads {s.threads or 'default'}, {s.form} form, allocator {s.allocator}, torch "
                        f"{literal(cal.torch_version)}; calibrated {literal(cal.created)})", title_justify="left")
    columns = ["spec", "px", "params", "MACs", "ms/batch", "img/s"]
    anchored = measure and any(r.machine_speed for r in rows)
    if measure:
        columns += ["measured img/s", "error"]
    if anchored:
        columns += ["machine now", "error at that speed"]
    for column in columns:
        table.add_column(column, justify="left" if column == "spec" else "right")
    for r in rows:
        cells = [literal(r.name), str(r.spec.resolution), fmt_params(r.params), fmt_macs(r.macs),
                 f"{r.prediction.latency_ms:,.1f}", f"{r.prediction.images_per_s:,.1f}"]
        if measure:
            cells += [f"{r.measured_images_per_s:,.1f}" if r.measured_images_per_s else literal(r.measure_error or "-"),
                      f"{r.error * 100:+.1f}%" if r.error is not None else "-"]
        if anchored:
            cells += [f"{(r.machine_speed - 1) * 100:+.1f}% time" if r.machine_speed else "-",
                      f"{r.anchored_error * 100:+.1f}%" if r.anchored_error is not None else "-"]
        table.add_row(*cells)
    console.print(table)
    if anchored:
        console.print("machine now: the drift reference (CMT-Ti), timed in turn with each spec, against its time when "
                      "calibrated (+10% time: the machine runs 10% slower now); the last column scales the "
                      "prediction by it", soft_wrap=True)
    console.print(f"a plain script sees these speeds with: {literal(held['plain_script'])}", soft_wrap=True)
    if json_path is not None:
        console.print(f"wrote {literal(str(json_path))}")
