"""Start-up time of `cmt-gen --help` against `python -c "import torch"`, measured in the same run.

The light commands must not pay for torch: the goal is a ratio under 1/3.
Each command runs in a fresh interpreter, interleaved (so that drifting machine
load hits both alike), after one untimed warm-up each; the median of the runs
is reported, with the spread.

    python benchmarks/bench_cli_startup.py [--runs 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "cmt-gen --help": [sys.executable, "-c", "import sys; from cmt_gen.cli.app import main; main(sys.argv[1:])",
                       "--help"],
    "cmt-gen list": [sys.executable, "-c", "import sys; from cmt_gen.cli.app import main; main(sys.argv[1:])",
                     "list"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    'python -c "pass"': [sys.executable, "-c", "pass"],
}
GOAL = 1 / 3


def wall_time(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def measure(runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for argv in COMMANDS.values():  # warm the file cache; not timed
        wall_time(argv)
    for _ in range(runs):
        for name, argv in COMMANDS.items():
            times[name].append(wall_time(argv))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per command (default 9)")
    parser.add_argument("--json", action="store_true", help="print a JSON record")
    args = parser.parse_args()

    times = measure(max(1, args.runs))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["cmt-gen --help"] / medians['python -c "import torch"']
    if args.json:
        print(json.dumps({"runs": args.runs, "median_s": medians, "all_s": times, "ratio_help_to_torch": ratio,
                          "goal": GOAL, "meets_goal": ratio < GOAL}, indent=2))
        return
    print(f"{'command':<28} {'median':>9} {'min':>9} {'max':>9}   ({args.runs} runs each, {sys.executable})")
    for name, t in times.items():
        print(f"{name:<28} {medians[name] * 1000:>7.0f}ms {min(t) * 1000:>7.0f}ms {max(t) * 1000:>7.0f}ms")
    verdict = "meets" if ratio < GOAL else "MISSES"
    print(f"ratio cmt-gen --help / import torch = {ratio:.3f} ({verdict} the goal of < {GOAL:.3f})")


if __name__ == "__main__":
    main()
