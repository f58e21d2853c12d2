"""Wall time of `cmt-gen check`, start-up included, against its goals, measured in one run.

- `cmt-gen check --all --counter analytic`: goal under 1.5 s (no torch, no model);
- `cmt-gen check <the five variants> --counter both`: goal under 10 s (five models
  built and traced by fvcore, CMT-L at 288x288 among them).

Each command runs in a fresh interpreter as a user would run it; one untimed
warm-up per command fills the file cache, then the timed runs. The traced
check spreads the specs over one worker process per CPU (one torch thread
each), so other load on the machine slows it most: compare runs only at a
similar load average. Exit code 3 is
the expected result here (documented paper deviations: CMT-S, CMT-L); anything
else stops the benchmark. The machine's load average is printed beside the
times, since a shared machine slows the traced counter most.

    python benchmarks/bench_check.py [--runs 5] [--both-runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

FIVE = ["cmt_ti", "cmt_xs", "cmt_s", "cmt_b", "cmt_l"]
ENTRY = [sys.executable, "-c", "import sys; from cmt_gen.cli.app import main; main(sys.argv[1:])"]
# name: (argv, goal in seconds, extra environment)
COMMANDS = {
    "check --all --counter analytic": ([*ENTRY, "check", "--all", "--counter", "analytic"], 1.5, {}),
    "check <five> --counter both": ([*ENTRY, "check", *FIVE, "--counter", "both"], 10.0, {}),
}
EXPECTED_CODES = {0, 3}


def wall_time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **env})
    elapsed = time.perf_counter() - start
    if proc.returncode not in EXPECTED_CODES:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of the analytic check (default 5)")
    parser.add_argument("--both-runs", type=int, default=3, help="timed runs of the traced check (default 3)")
    parser.add_argument("--json", action="store_true", help="print a JSON record")
    args = parser.parse_args()

    load_before = os.getloadavg()
    times: dict[str, list[float]] = {}
    for name, (argv, _goal, env) in COMMANDS.items():
        wall_time(argv, env)  # warm-up, not timed
        runs = args.runs if "analytic" in name else args.both_runs
        times[name] = [wall_time(argv, env) for _ in range(max(1, runs))]
    load_after = os.getloadavg()
    record = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs": len(t),
               "goal_s": COMMANDS[name][1], "ratio_to_goal": statistics.median(t) / COMMANDS[name][1]}
        for name, t in times.items()
    }
    if args.json:
        print(json.dumps({"results": record, "load_average_before": load_before, "load_average_after": load_after,
                          "cpus": os.cpu_count()}, indent=2))
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    for name, r in record.items():
        verdict = "meets" if r["ratio_to_goal"] < 1 else "MISSES"
        print(f"{name:34s} median {r['median_s']:6.2f} s (min {r['min_s']:.2f}, max {r['max_s']:.2f}, "
              f"{r['runs']} runs)  goal {r['goal_s']:.1f} s  ratio {r['ratio_to_goal']:.2f}  {verdict} the goal")


if __name__ == "__main__":
    main()
