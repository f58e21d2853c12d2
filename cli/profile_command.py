"""`profile`: images/s, latency, peak memory and achieved MAC/s of CMT variants (and timm peers) here.

Everything the run needs is checked before the first model is built (specs,
device, precision, timm, output folders), so mistakes exit 2 at once. torch
is imported inside the command only.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cmt_gen.cli.common import (
    DEVICE_HELP,
    SET_HELP,
    ReadableCommand,
    console,
    err_console,
    family_order,
    fmt_bytes,
    literal,
    one_line,
)


def register(app: typer.Typer) -> None:
    app.command("profile", cls=ReadableCommand)(profile)


def profile(
    specs: list[str] = typer.Argument(
        None, help="Bundled spec names or YAML paths (default: every bundled variant); "
                   "timm:<model>[@res] adds a peer, like --compare."),
    device: str = typer.Option("auto", "--device", "-d", help=DEVICE_HELP),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Images per call (default: by device, or "
                                                                      "the protocol's; decays on out-of-memory)."),
    precision: str = typer.Option(None, "--precision", help="fp32, fp16, bf16 or amp (default fp32, or the "
                                                              "protocol's)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Model and input in channels-last layout."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model; compile time is "
                                                                 "reported separately."),
    compile_mode: str = typer.Option(None, "--compile-mode", help="torch.compile mode (implies --compile): "
                                                                   "default, reduce-overhead, max-autotune, ..."),
    mode: str = typer.Option("infer", "--mode", help="infer (eval, inference_mode) or train (forward, backward, "
                                                     "AdamW step)."),
    protocol: str = typer.Option(None, "--protocol", help="Paper presets: deit (largest batch that fits, fp32), "
                                                          "swin (batch 64, fp32), timm (batch 256, AMP)."),
    warmup: int = typer.Option(None, "--warmup", help="Untimed calls before timing (default: by device)."),
    iters: int = typer.Option(None, "--iters", help="At least this many timed calls per repeat."),
    min_time: float = typer.Option(None, "--min-time", help="At least this many seconds per repeat (more = "
                                                            "more precise)."),
    repeats: int = typer.Option(None, "--repeats", help="Timed repeats; images/s is their median."),
    threads: int = typer.Option(None, "--threads", help="torch intra-op threads (CPU work)."),
    compare: list[str] = typer.Option(None, "--compare", help="Peer(s) timed under the same settings: "
                                                              "timm:swin_tiny_patch4_window7_224 (repeatable, "
                                                              "or comma-separated)."),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    json_path: Path = typer.Option(None, "--json", help="Write all records as JSON (atomically); - prints "
                                                        "them on stdout and the table on stderr."),
    csv_path: Path = typer.Option(None, "--csv", help="Write one CSV row per model (atomically)."),
    allow_slow_precision: bool = typer.Option(False, "--allow-slow-precision",
                                              help="Measure fp16/bf16 even where the CPU only emulates it."),
    force: bool = typer.Option(False, "--force", help="Profile even when the estimated memory exceeds what is free."),
    form: str = typer.Option(None, "--form", help="deploy (reparameterized, as shipped; the default for "
                                                  "inference) or as-built (the training form; always in train mode)."),
    backend: str = typer.Option(None, "--backend", help="eager (default), compile (torch.compile) or "
                                                        "onnxruntime (the exported deploy form, CPU)."),
    allocator: str = typer.Option("auto", "--allocator", help="Host memory: retain (glibc keeps freed "
                                                              "memory: no page faults per forward; auto picks it "
                                                              "on Linux CPU runs) or system (C library defaults)."),
    fp32_check: bool = typer.Option(True, "--fp32-check/--no-fp32-check",
                                    help="With a low precision on CPU, also time fp32 and say which is faster."),
) -> None:
    """Throughput (median of repeats), batch-1 latency p50/p90, peak memory and % of matmul peak."""
    from cmt_gen.profile.output import check_output_path, write_outputs
    from cmt_gen.profile.peers import is_peer
    from cmt_gen.profile.runner import make_target
    from cmt_gen.profile.settings import ProfileRequest, resolve_settings
    from cmt_gen.spec.bundled import bundled_names

    args = list(specs or [])
    from cmt_gen.spec.detector_loading import is_detector

    detectors = [a for a in args if not is_peer(a) and is_detector(a)]
    if detectors:
        _check_detector_options(args, detectors, locals())
        from cmt_gen.cli.detector_commands import profile_detectors_command

        profile_detectors_command(detectors, overrides, device, batch_size, threads, warmup, iters, repeats, json_path,
                                  force)
        return
    # `--compare timm:a timm:b` leaves timm:b among the positional arguments: keep the written order.
    peers = [p.strip() for item in compare or [] for p in item.split(",") if p.strip()]
    peers += [a for a in args if is_peer(a)]
    names = [a for a in args if not is_peer(a)] or family_order(bundled_names())
    from cmt_gen.files import check_output_target
    from cmt_gen.spec.loading import load_spec, spec_files

    inputs = [f for name in names for f in spec_files(name)] if names else []
    json_to_stdout = json_path is not None and str(json_path) == "-"
    # What the paths collide with first (an input, each other), then what each must look like.
    json_file = None if json_to_stdout or json_path is None else check_output_target(json_path, inputs=inputs)
    csv_file = None if csv_path is None else check_output_target(csv_path, inputs=inputs, others=[json_file])
    json_file = check_output_path(json_file, ".json")
    csv_file = check_output_path(csv_file, ".csv")
    settings = resolve_settings(ProfileRequest(
        device=device, batch_size=batch_size, precision=precision, channels_last=channels_last,
        compile=compile_model, compile_mode=compile_mode, mode=mode, warmup=warmup, iters=iters,
        min_time=min_time, repeats=repeats, threads=threads, protocol=protocol,
        allow_slow_precision=allow_slow_precision, form=form, backend=backend, allocator=allocator,
    ))
    targets = [make_target(name, overrides=overrides) for name in names]
    from cmt_gen.profile.fits import check_profile_fits

    check_profile_fits([load_spec(name, overrides) for name in names], settings, force=force)
    for peer in peers:
        if not peer.startswith("timm:"):
            from cmt_gen.errors import CmtGenError

            raise CmtGenError("a peer is written timm:<model name>[@<resolution>]", source=peer, field="compare")
        targets.append(make_target(peer))

    run = _run_with_progress(targets, settings)
    written = write_outputs(run, json_file, csv_file)  # first: the measurements outlive any printing trouble
    out_console = err_console if json_to_stdout else console
    print_run(run, out_console)
    if settings.precision != "fp32" and _on_host(settings) and fp32_check and not run.interrupted:
        _print_precision_check(run, targets, settings, out_console)
        written = write_outputs(run, json_file, csv_file)  # again, now with the fp32 reference
    if json_to_stdout:
        from cmt_gen.cli.common import emit_json
        from cmt_gen.profile.output import run_payload

        emit_json(run_payload(run))
    for path in written:
        err_console.print(f"wrote {literal(path)}")
    if run.interrupted:
        err_console.print(f"[bold yellow]interrupted:[/] kept {len(run.results)} finished model(s) of "
                          f"{len(targets)}")
        raise typer.Exit(130)
    if run.failed:
        err_console.print(f"[bold red]{len(run.failed)} of {len(run.results)} model(s) failed[/]; "
                          "the others were measured")
        raise typer.Exit(1)


# What `profile` can set for a detector: the rest (precision, compile, forms, peers...) is for backbones.
DETECTOR_OPTIONS = {"specs", "device", "batch_size", "threads", "warmup", "iters", "repeats", "overrides", "json_path",
                    "force"}
_DEFAULTS = {"device": "auto", "allocator": "auto", "fp32_check": True, "channels_last": False,
             "compile_model": False, "mode": "infer", "allow_slow_precision": False, "force": False}


def _check_detector_options(args: list[str], detectors: list[str], given: dict) -> None:
    from cmt_gen.errors import CmtGenError

    others = [a for a in args if a not in detectors]
    if others:
        raise CmtGenError(f"profile detectors and backbones in separate runs (got {', '.join(others)} beside "
                          f"{', '.join(detectors)})", source="profile")
    import inspect

    for name in inspect.signature(profile).parameters:
        value = given[name]
        if name in DETECTOR_OPTIONS:
            continue
        if value not in (None, [], _DEFAULTS.get(name)):
            flag = "--" + name.replace("_", "-").removesuffix("-model").removesuffix("-path")
            raise CmtGenError(f"{flag} applies to backbones; a detector profile takes --device, --batch-size, "
                              "--threads, --warmup, --iters, --repeats, --set, --json and --force", field=flag)


def _on_host(settings) -> bool:
    """Whether the run measured the host CPU, where a low precision may be slower than fp32."""
    from cmt_gen.devices import device_for

    return device_for(settings.device_type).host


def _print_precision_check(run, targets, settings, console) -> None:
    """Time fp32 under the same settings and say plainly whether the low precision is slower here."""
    from dataclasses import replace

    from cmt_gen.profile.backends import cpu_low_precision_units, describe_cpu_units, precision_verdicts

    console.print(f"this CPU: {describe_cpu_units(cpu_low_precision_units())}; timing fp32 for comparison")
    reference = _run_with_progress(targets, replace(settings, precision="fp32", compute_dtype="float32"))
    run.precision_check = [r.as_dict() for r in reference.results]
    for line in precision_verdicts(run.results, reference.results, settings.precision):
        console.print(line)


def _run_with_progress(targets, settings):
    """A live bar on a terminal; piped, one plain line per step on stderr (stdout stays clean for --json -)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from cmt_gen.profile.runner import run_profiles

    if not err_console.is_terminal:
        return run_profiles(targets, settings, progress=_plain_progress(targets))
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("profiling", total=len(targets))

        def phase(index: int, text: str) -> None:
            label = targets[index].name if 0 <= index < len(targets) else "device"
            bar.update(task, description=f"{literal(label)}: {literal(text)}")

        return run_profiles(targets, settings, progress=phase, on_result=lambda _r: bar.advance(task))


def _plain_progress(targets):
    """One line per step, prefixed with the model's place in the run and the seconds since it began."""
    import sys
    import time

    started = time.perf_counter()

    def phase(index: int, text: str) -> None:
        known = 0 <= index < len(targets)
        where = f"[{index + 1}/{len(targets)}] {one_line(targets[index].name)}" if known else "[setup]"
        print(f"{time.perf_counter() - started:6.1f}s {where}: {one_line(text)}", file=sys.stderr, flush=True)

    return phase


# ---------------------------------------------------------------- rendering

def print_run(run, out=None) -> None:
    """The results table and its footer on `out` (stdout's console unless JSON takes stdout)."""
    from cmt_gen.cost.table2 import THROUGHPUT_LABEL

    out = out or console
    s = run.settings
    env = run.env
    latency_label = "latency b1 p50/p90 ms" if s.mode == "infer" else "step p50/p90 ms"
    title = (f"profile on {s.device} ({env.get('device_name')}), {s.precision}"
             f"{' (' + s.compute_dtype + ')' if s.precision == 'amp' else ''}, {s.mode}"
             f"{', protocol ' + s.protocol if s.protocol else ''}{', channels-last' if s.channels_last else ''}"
             f"{', compiled' if s.compile else ''}, form {s.form} (CMT models), backend {s.backend}, "
             f"allocator {s.allocator}")
    table = Table(title=title, title_justify="left")
    for column in ("model", "input", "batch", "img/s", "±", latency_label, "peak mem", "GMACs", "GMAC/s",
                   "% peak", "compile s", THROUGHPUT_LABEL, "note"):
        table.add_column(column, justify="left" if column in ("model", "note") else "right")
    for r in run.results:
        if r.error:
            table.add_row(literal(r.name), f"{r.resolution}", "-", "-", "-", "-", "-", _g(r.macs_per_image), "-", "-",
                          "-", _num(r.paper_throughput), f"[red]{_escape(r.error)}[/]")
            continue
        table.add_row(
            literal(r.name), f"{r.resolution}", str(r.batch_size),
            f"[yellow]~{r.images_per_s:,.1f} noisy[/]" if r.noisy else f"{r.images_per_s:,.1f}",
            f"{r.spread * 100:.1f}%" if r.spread is not None else "-",
            f"{r.latency_p50_ms:,.1f} / {r.latency_p90_ms:,.1f}" if r.latency_p50_ms is not None else "-",
            fmt_bytes(r.peak_memory_bytes),
            _g(r.macs_per_image),
            f"{r.achieved_macs_per_s / 1e9:,.1f}" if r.achieved_macs_per_s else "-",
            f"{r.fraction_of_peak * 100:.1f}%" if r.fraction_of_peak is not None else "-",
            f"{r.compile_seconds:.1f}" if r.compile_seconds is not None else "-",
            _num(r.paper_throughput), _escape("; ".join(r.notes)),
        )
    out.print(table)
    _print_footer(run, out)
    _print_ratios(run, out)


def _print_footer(run, console) -> None:
    from cmt_gen.cost.table2 import THROUGHPUT_NOTE

    s, env = run.settings, run.env
    timing = (f"timing: warm-up {s.warmup} call(s); {s.repeats} repeats of >= {s.iters} call(s) and "
              f">= {s.min_time:g} s; img/s = median, ± = half the min-max range (- for one repeat); above "
              f"{s.max_spread:.0%} up to {s.extend_time:g} s more repeats run and the last {s.repeats} are kept, "
              "still above: ~ and noisy")
    console.print(timing, soft_wrap=True)
    console.print(THROUGHPUT_NOTE, soft_wrap=True)
    if run.matmul_peak:
        p = run.matmul_peak
        train = " x 3 (train)" if s.mode == "train" else ""
        console.print(f"matmul peak here: {p.macs_per_s / 1e9:,.1f} GMAC/s ({p.dtype} {p.size}x{p.size} via "
                      f"{p.kernel}, best of {p.windows}); % peak = model MACs x img/s{train} / this")
    methods = sorted({r.memory_method for r in run.results if r.memory_method})
    if methods:
        console.print("peak mem: " + "; ".join(methods))
    load = env.get("load_average")
    load_end = env.get("load_average_end")
    console.print(
        f"env: torch {env.get('torch')}, {env.get('device_name')}"
        f"{' (' + str(env.get('cpu_capability')) + ')' if _on_host(s) else ''}, "
        f"threads {env.get('torch_threads')}, CUDA {env.get('cuda_runtime') or '-'}, Python {env.get('python')}"
        + (f", load {load[0]} -> {load_end[0] if load_end else '?'}" if load else "")
        + _busy_text(env)
        + f"; {run.elapsed_s:.0f} s in all", soft_wrap=True,
    )
    if s.threads_note:
        console.print(f"{s.threads_note} (--threads sets it)", soft_wrap=True)
    for warning in run.warnings:
        console.print(f"[yellow]warning:[/] {_escape(warning)}", soft_wrap=True)


def _busy_text(env) -> str:
    """Other work on the CPU before and during the run, the two numbers that say how far to trust it."""
    before, during = env.get("busy_before"), env.get("busy_during")
    if before is None and during is None:
        return ""
    show = lambda v: "?" if v is None else f"{v * 100:.0f}%"  # noqa: E731
    return f", other work {show(before)} of the cores before, {show(during)} during"


def _print_ratios(run, console) -> None:
    from cmt_gen.profile.peers import throughput_ratios

    ratios = throughput_ratios(run.results)
    if not ratios:
        return
    from cmt_gen.cost.table2 import THROUGHPUT_DEVICE

    table = Table(title=f"throughput ratios, CMT / peer (paper: from Table 2's images/s, {THROUGHPUT_DEVICE})",
                  title_justify="left")
    for column in ("CMT", "peer", "paper", "measured here", "paper row"):
        table.add_column(column, justify="left" if column in ("CMT", "peer", "paper row") else "right")
    for r in ratios:
        table.add_row(literal(r.cmt), literal(r.peer), f"{r.paper:.3f}" if r.paper else "-",
                      f"{r.measured:.3f}" if r.measured else "-", literal(r.paper_peer_row or "-"))
    console.print(table)


def _g(macs: int | None) -> str:
    return f"{macs / 1e9:.3f}" if macs else "-"


def _num(value: float | None) -> str:
    return f"{value:,.1f}" if value else "-"


def _escape(text: str) -> str:
    return literal(text)
