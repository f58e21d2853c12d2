"""Latency prediction against measurement: run `python benchmarks/bench_latency.py --threads 1`.

Goals (issue 13), all in one run with one set of settings:
- calibrate (time CMT's building blocks, fit the latency model) in under 5 minutes;
- on `--n` (default 30) random specs drawn by `sample` (around CMT-XS, 160-256 px,
  up to 3 GMACs; never used in calibration, which times single blocks), at least
  90% of predicted throughputs within +-10% of the profiler's median images/s;
  reports the fraction, the median and the worst error, and a scatter plot;
- `design --throughput T --calibration` in under 5 s, and its best design, profiled,
  within +-10% of T (T: the median measured throughput of the sample).

The calibration runs in a child process (as `cmt-gen calibrate` runs apart from
`predict --measure`), and the specs are profiled in `--passes` (default 2) passes
over the whole list, each spec keeping its fastest pass: on a shared VM other
load comes in bursts of a minute or more, and only ever slows a run down.

`--quick` is the reduced form CI runs (a few tiny specs, batch 1, minimal timing):
it exercises every step and writes the same report, but its numbers mean nothing.
Writes `bench_latency.json`, `bench_latency.png` and the calibration to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

GOAL_FRACTION, GOAL_ERROR, GOAL_CALIBRATION_S, GOAL_DESIGN_S = 0.90, 0.10, 300.0, 5.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=30, help="random specs to predict and measure")
    p.add_argument("--threads", type=int, default=1, help="torch threads for calibration and measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed repeat when profiling a spec")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats when profiling a spec")
    p.add_argument("--passes", type=int, default=2, help="profile the whole list this many times, keep each "
                                                       "spec's fastest pass")
    p.add_argument("--form", default="deploy", choices=("deploy", "as-built"), help="the form calibrated and profiled")
    p.add_argument("--calibration", type=Path, help="reuse this calibration instead of calibrating")
    p.add_argument("--quick", action="store_true", help="reduced CI form: few tiny specs, no timing goals")
    p.add_argument("--out", type=Path, default=Path("bench_latency_out"))
    return p.parse_args(argv)


def measure_fastest(rows: list, cal, passes: int, **timing) -> None:
    """Profile every row `passes` times over the whole list and keep each row's fastest median.

    Load from other processes only ever slows a run down, and on a shared VM it comes in bursts
    of a minute or more; passes spread each spec's measurements over the run, as the calibration
    keeps each block's fastest repeat.
    """
    from cmt_gen.latency.evaluate import measure_rows

    fastest: dict[int, float] = {}
    for _ in range(passes):
        measure_rows(rows, cal, **timing)
        for i, row in enumerate(rows):
            if row.measured_images_per_s:
                fastest[i] = max(fastest.get(i, 0.0), row.measured_images_per_s)
    for i, row in enumerate(rows):
        if i in fastest:
            row.measured_images_per_s, row.measure_error = fastest[i], None


def calibrate_into(args: argparse.Namespace, out: Path) -> None:
    """Calibrate with the benchmark's settings and save `out/calibration.json` (run in a child process)."""
    from cmt_gen.latency.calibrate import calibrate
    from cmt_gen.latency.calibration_file import save_calibration

    quick = args.quick
    last = [0.0]

    def progress(done: int, total: int, what: str) -> None:
        if time.perf_counter() - last[0] > 15 or done == total:
            last[0] = time.perf_counter()
            print(f"  calibrating {done}/{total}: {what}", flush=True)

    cal = calibrate(device=args.device, threads=args.threads, batch_size=1 if quick else None, form=args.form,
                    blocks_per_stage=3 if quick else 24, min_time=0.0 if quick else 0.15,
                    repeats=1 if quick else 3, progress=progress)
    save_calibration(cal, out / "calibration.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cmt_gen.design.sampling import sample_specs
    from cmt_gen.design.search import design_specs
    from cmt_gen.latency.calibration_file import load_calibration
    from cmt_gen.latency.evaluate import predict_rows, summary

    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    n = min(args.n, 3) if quick else args.n
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; threads {args.threads}; "
          f"{'quick (CI) form' if quick else 'full form'}; model form {args.form}", flush=True)
    from cmt_gen.profile.env import busy_warning

    busy = busy_warning(args.device)
    if busy:
        print(f"WARNING: {busy}", flush=True)
    started = time.perf_counter()
    if args.calibration:
        cal = load_calibration(args.calibration)
        print(f"calibration: reused {args.calibration} (took {cal.seconds:.0f} s when made)")
    else:
        # Calibrated in a child process, as `cmt-gen calibrate` runs apart from `predict --measure`: in one
        # process, the specs profiled first after calibrating measured up to 15% slow (a 6-of-30 miss).
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=calibrate_into, args=(args, args.out))
        child.start()
        child.join()
        if child.exitcode != 0:
            print(f"calibration failed (exit {child.exitcode})")
            return 1
        cal = load_calibration(args.out / "calibration.json")
        print(f"calibration: {cal.seconds:.1f} s for {len(cal.measurements)} blocks; fit median/worst error "
              + ", ".join(f"{k} {m.median_error:.1%}/{m.worst_error:.1%}" for k, m in cal.parts.items()), flush=True)

    space = (dict(base="cmt_ti", resolution="64..96", macs="..0.3G", width_range=(0.3, 0.6), depth_range=(0.3, 0.6))
             if quick else dict(base="cmt_xs", resolution="160..256", macs="..3G"))
    sampled = sample_specs(space.pop("base"), n, seed=args.seed, **space)
    rows = predict_rows([s.spec for s in sampled.samples], cal)
    min_time, repeats = (0.0, 1) if quick else (args.min_time, args.repeats)
    measure_started = time.perf_counter()
    passes = 1 if quick else args.passes
    measure_fastest(rows, cal, passes, min_time=min_time, repeats=repeats)
    measure_s = time.perf_counter() - measure_started
    for r in rows:
        shown = f"{r.measured_images_per_s:8.2f}" if r.measured_images_per_s else f"failed: {r.measure_error}"
        err = f"{r.error:+.1%}" if r.error is not None else "-"
        print(f"  {r.name:16s} {r.spec.resolution:4d} px {r.macs / 1e9:6.2f} GMACs  predicted "
              f"{r.prediction.images_per_s:8.2f} img/s  measured {shown}  error {err}")
    stats = summary(rows, GOAL_ERROR)
    print(f"prediction: {stats.get('fraction_within', 0):.0%} of {stats['measured']} specs within +-10% "
          f"(goal >= 90% of >= 30); median error {stats.get('median_abs_error', float('nan')):.1%}, worst "
          f"{stats.get('worst_abs_error', float('nan')):.1%}; measuring took {measure_s:.0f} s", flush=True)

    measured = sorted(r.measured_images_per_s for r in rows if r.measured_images_per_s)
    design_report = None
    if measured:
        target = round(measured[len(measured) // 2], 2)
        base = "cmt_ti" if quick else "cmt_xs"
        t0 = time.perf_counter()
        found = design_specs(base, throughput=target, calibration=cal,
                             resolution="64..96" if quick else "160..256")
        design_s = time.perf_counter() - t0
        design_report = {"target_images_per_s": target, "seconds": design_s, "feasible": found.feasible}
        if found.best is not None:
            best = predict_rows([found.best.spec], cal)
            measure_fastest(best, cal, passes, min_time=min_time, repeats=repeats)
            got = best[0].measured_images_per_s
            design_report.update(predicted_images_per_s=best[0].prediction.images_per_s, measured_images_per_s=got,
                                 error_vs_target=None if got is None else got / target - 1)
        miss = design_report.get("error_vs_target")
        print(f"design --throughput {target}: {design_s:.2f} s (goal < {GOAL_DESIGN_S:.0f} s); best design measured "
              f"{'-' if miss is None else f'{miss:+.1%}'} from the target (goal within +-10%)", flush=True)

    report = {"quick": quick, "threads": args.threads, "device": cal.settings.device, "machine": cal.machine,
              "batch_size": cal.settings.batch_size, "calibration_seconds": cal.seconds,
              "calibration_fit": {k: {"median": m.median_error, "worst": m.worst_error} for k, m in cal.parts.items()},
              "summary": stats, "design": design_report, "rows": [r.as_dict() for r in rows],
              "elapsed_seconds": time.perf_counter() - started, "load_average": os.getloadavg(),
              "busy_before": busy}
    (args.out / "bench_latency.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_scatter(rows, args.out / "bench_latency.png", cal)
    print(f"wrote {args.out / 'bench_latency.json'} and {args.out / 'bench_latency.png'}; whole run "
          f"{report['elapsed_seconds']:.0f} s")
    if quick:
        return 0
    goals = [stats.get("fraction_within", 0) >= GOAL_FRACTION and stats["measured"] >= 30,
             args.calibration is not None or cal.seconds <= GOAL_CALIBRATION_S,
             design_report is not None and design_report["seconds"] < GOAL_DESIGN_S
             and abs(design_report.get("error_vs_target") or 1) <= GOAL_ERROR]
    print("goals: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in
                                zip(("accuracy", "calibration time", "design"), goals, strict=True)))
    return 0 if all(goals) else 1


def plot_scatter(rows, path: Path, cal) -> None:
    """Predicted against measured images/s, with the +-10% band."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.measured_images_per_s]
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    try:
        if done:
            xs = [r.measured_images_per_s for r in done]
            ys = [r.prediction.images_per_s for r in done]
            lo, hi = min(xs + ys) / 1.2, max(xs + ys) * 1.2
            ax.plot([lo, hi], [lo, hi], "-", color="#444444", linewidth=1, label="prediction = measurement")
            for f, style in ((1.1, "--"), (0.9, "--")):
                ax.plot([lo, hi], [lo * f, hi * f], style, color="#999999", linewidth=1)
            inside = [abs(r.error) <= GOAL_ERROR for r in done]
            ax.scatter(xs, ys, c=["#2ca02c" if ok else "#d62728" for ok in inside], s=30, zorder=3,
                       label=f"{sum(inside)}/{len(done)} within +-10%")
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())
        s = cal.settings
        ax.set_title(f"predicted vs measured images/s\n{cal.machine}, {s.precision}, batch {s.batch_size}, "
                     f"threads {s.threads}", fontsize=9)
        ax.set_xlabel("measured images/s (cmt-gen profile, median)")
        ax.set_ylabel("predicted images/s (cmt-gen predict)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
