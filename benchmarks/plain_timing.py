"""Time specs the way a user's own script would: `python benchmarks/plain_timing.py SPECS.json --threads 1`.

No cmt-gen profiler, no allocator or oneDNN settings from cmt-gen: build the model with the public API,
take its deploy form, set torch's thread count, warm up, then time plain loops with `time.perf_counter`
and report the median of their mean seconds per call (`--repeats` loops sharing `--min-time`, as a
`timeit.repeat` user would: one burst of other work on a shared machine moves one loop, not the result).
`bench_latency.py` runs this in a separate process, with the environment the README tells a plain script
to set (`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` on glibc, the memory policy a calibration records
as `allocator: retain`), and compares the predictions with what it prints. SPECS.json is a list of spec
mappings (`CMTSpec.model_dump(mode="json")`); one JSON line a spec is printed on stdout: name, seconds
per call and, with `--reference`, the reference's seconds per call around it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("specs", type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (then synchronised around the loop)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--form", default="deploy", choices=("deploy", "as-built"))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reference", default=None, help="also time this bundled spec just before and after each "
                                                     "(the machine's speed, as a user's script could check it)")
    p.add_argument("--min-calls", type=int, default=5, help="calls at least, over all loops")
    p.add_argument("--min-time", type=float, default=2.0, help="keep calling until this many seconds have passed")
    p.add_argument("--repeats", type=int, default=3, help="timed loops sharing --min-time and --min-calls; "
                                                          "the median loop's mean is reported")
    args = p.parse_args(argv)

    import torch

    from cmt_gen import build_model, load_spec

    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def ready(spec):
        model = build_model(spec).eval()
        if args.form == "deploy":
            model.reparameterize()
        x = torch.randn(args.batch_size, spec.in_channels, spec.resolution, spec.resolution, device=args.device)
        return model.to(args.device), x

    def timed(model, x, min_calls: int, min_time: float, repeats: int = 1) -> tuple[float, int]:
        """The median over `repeats` loops of a loop's mean seconds per call, and the calls made."""
        means, total = [], 0
        with torch.inference_mode():
            for _ in range(args.warmup):
                model(x)
            sync()
            for _ in range(repeats):
                calls, start = 0, time.perf_counter()
                while calls < -(-min_calls // repeats) or time.perf_counter() - start < min_time / repeats:
                    model(x)
                    calls += 1
                    if calls % 5 == 0:
                        sync()  # so the time check sees finished work
                sync()
                means.append((time.perf_counter() - start) / calls)
                total += calls
        return statistics.median(means), total

    reference = ready(load_spec(args.reference)) if args.reference else None
    for data in json.loads(args.specs.read_text()):
        spec = load_spec(data)
        record: dict = {"name": spec.name}
        if reference is not None:  # the machine's speed just before and just after
            before, _ = timed(*reference, 1, args.min_time / 4)
        record["seconds"], record["calls"] = timed(*ready(spec), args.min_calls, args.min_time, args.repeats)
        if reference is not None:
            after, _ = timed(*reference, 1, args.min_time / 4)
            record["reference_seconds"] = (before + after) / 2
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
