"""Design-search timings against their goals: run `python benchmarks/bench_design.py`.

Goal (issue 5): `cmt-gen design` from CMT-B for Table 2's CMT-L budget
(74.7M params, 19.5G MACs, 288 px) finds a spec within 1% / 2% in under 5 s
on the 2-core development machine, command start-up included. Also prints
how many cost evaluations per second `analytic_cost` and the linear
`CostModel` give, which is what the search budget rests on.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 5.0
CMT_L = ["--params", "74.7M", "--macs", "19.5G", "--resolution", "288", "--from", "cmt_b"]


def rate(fn, seconds: float = 1.0) -> float:
    """Calls per second of fn over about `seconds`."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> int:
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.design.cost_model import CostModel
    from cmt_gen.design.scaling import Shape
    from cmt_gen.design.search import design_specs
    from cmt_gen.spec.loading import load_spec

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    spec = load_spec("cmt_b")
    model, shape = CostModel(spec), Shape.of(spec)
    print(f"analytic_cost(cmt_b):       {rate(lambda: analytic_cost(spec)):>10,.0f} evaluations/s")
    print(f"CostModel.cost (cached):    {rate(lambda: model.cost(shape)):>10,.0f} evaluations/s")

    library = []
    for _ in range(3):
        start = time.perf_counter()
        result = design_specs("cmt_b", params="74.7M", macs="19.5G", resolution=288)
        library.append(time.perf_counter() - start)
    best = result.best
    print(f"design_specs, CMT-L budget: median {statistics.median(library):.2f} s over 3 runs "
          f"({result.evaluated:,} designs), best {best.params / 1e6:.2f}M / {best.macs / 1e9:.3f}G")

    runs, ok = [], True
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cmt_l.yaml"
        for _ in range(3):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", "from cmt_gen.cli.app import main; main()", "design",
                                   *CMT_L, "-o", str(out)], capture_output=True, text=True, cwd=REPO)
            runs.append(time.perf_counter() - start)
            ok = ok and proc.returncode == 0
        cost = analytic_cost(load_spec(out)) if ok else None
    meets = cost is not None and abs(cost.params / 74.7e6 - 1) <= 0.01 and abs(cost.macs / 19.5e9 - 1) <= 0.02
    worst = max(runs)
    print(f"cmt-gen design (CLI, fresh interpreter): median {statistics.median(runs):.2f} s, worst {worst:.2f} s; "
          f"goal < {GOAL_SECONDS:.0f} s: {'met' if worst < GOAL_SECONDS else 'MISSED'}; "
          f"budget within 1%/2%: {'yes' if meets else 'NO'}")
    return 0 if ok and meets else 1


if __name__ == "__main__":
    sys.exit(main())
