"""Speed of the deploy form against the as-released CMT, in one interleaved run (issue 10).

Every variant runs the same weights on the same input. One round times one batch of
each variant in turn (A B C ... A B C ...), so load from other processes on a shared
machine falls on all of them alike; the table gives each variant's median over the
rounds and its ratio to the reference:

- reference: the as-released form (`block.attention=math`, not reparameterized);
- as built: our default (`attention: fused`, i.e. SDPA), not reparameterized;
- deploy: `CMT.reparameterize()`, eager; `+ compile`: `torch.compile` (inductor, freezing)
  of the deploy form, compile time reported apart; `onnxruntime`: the exported deploy form;
- bf16: the as-released and deploy forms cast to bfloat16 (logits' cosine similarity to fp32);
- ablation: the deploy form with one rewrite undone at a time (see `ABLATIONS`);
- latency: batch-1 p50 over interleaved calls.

    python benchmarks/bench_inference.py                      # CMT-S, 224, batch 16, 2 threads
    python benchmarks/bench_inference.py --rounds 3 --no-compile --no-onnx   # quicker
    python benchmarks/bench_inference.py --kernels            # the attention / linear kernel choice
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_ablations import ABLATIONS  # noqa: E402

from cmt_gen.export.graph import InferenceGraph  # noqa: E402
from cmt_gen.model.network import build_model  # noqa: E402

TARGETS = {"deploy": 1.5, "deploy + compile": 2.0}


def timed(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def median_call(fn, *args, n: int = 7) -> float:
    fn(*args)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleave(variants: dict, inputs: dict, rounds: int) -> dict[str, list[float]]:
    """One untimed call each, then `rounds` rounds of one timed call per variant, in turn."""
    for name, fn in variants.items():
        fn(inputs[name])
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, inputs[name]))
    return times


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min().item()


def onnx_runner(graph: nn.Module, x: torch.Tensor, stride: int, threads: int, folder: str):
    from cmt_gen.export.formats import load_runner, write_export

    path = Path(folder) / "deploy.onnx"
    write_export("onnx", graph, x, stride, path)
    return load_runner("onnx", path, threads)


def kernel_report(threads: int, batch: int) -> None:
    """Attention with a float bias and one linear, at CMT-S shapes, by each implementation."""
    from cmt_gen.model import onednn
    from cmt_gen.model.attention_kernels import attend

    torch.set_num_threads(threads)
    print(f"attention, float bias, fp32, batch {batch}, {threads} threads (ms, median of 7):")
    for heads, n, m, d in ((1, 3136, 49, 64), (2, 784, 49, 64), (4, 196, 49, 64), (8, 49, 49, 64)):
        q, k, v = (torch.randn(batch, heads, s, d) for s in (n, m, m))
        bias = torch.randn(heads, n, m)
        row = {kernel: median_call(attend, q, k, v, bias, kernel) for kernel in ("sdpa", "matmul")}
        print(f"  heads {heads} N {n:5d} M {m}: " + "  ".join(f"{k} {t * 1e3:7.2f}" for k, t in row.items()))
    x = torch.randn(batch, 196, 256)
    w, b = torch.randn(1024, 256), torch.randn(1024)
    row = {"F.linear + F.gelu": median_call(lambda: F.gelu(F.linear(x, w, b))),
           "oneDNN linear+gelu": median_call(onednn.linear, x, w, b, "gelu")}
    print("linear 256 -> 1024 + GELU on (B, 196, 256) tokens (ms, median of 7):")
    for name, seconds in row.items():
        print(f"  {name:20s} {seconds * 1e3:7.2f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="cmt_s")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-rounds", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-onnx", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--kernels", action="store_true", help="only the kernel micro-benchmark")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.kernels:
        kernel_report(args.threads, args.batch)
        return {}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    released = build_model(args.spec, overrides=["block.attention=math"]).eval()
    for module in released.modules():  # trained-looking BN statistics, so folds do real work
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    as_built = copy.deepcopy(released)
    for module in as_built.modules():
        if hasattr(module, "fused"):
            module.fused = True
    deploy = copy.deepcopy(released).reparameterize()
    res = released.spec.resolution
    x = torch.randn(args.batch, 3, res, res)
    variants = {"as released (reference)": released, "as built (SDPA)": as_built, "deploy": deploy}
    inputs = dict.fromkeys(variants, x)
    notes: dict[str, str] = {}
    with torch.inference_mode():
        reference_logits = released(x)
        if not args.no_compile:
            start = time.perf_counter()
            compiled = torch.compile(InferenceGraph(deploy), options={"freezing": True})
            compiled(x)
            notes["deploy + compile"] = f"compile {time.perf_counter() - start:.0f} s (not in the times)"
            variants["deploy + compile"] = compiled
        if not args.no_onnx:
            folder = tempfile.mkdtemp()
            start = time.perf_counter()
            variants["onnxruntime (deploy)"] = onnx_runner(InferenceGraph(deploy), x, released.total_stride,
                                                           args.threads, folder)
            notes["onnxruntime (deploy)"] = f"export {time.perf_counter() - start:.0f} s"
        if not args.no_bf16:
            xb = x.to(torch.bfloat16)
            for name, model in (("as released, bf16", released), ("deploy, bf16", deploy)):
                variants[name] = copy.deepcopy(model).to(torch.bfloat16)
                inputs[name] = xb
        if not args.no_ablation:
            for name, undo in ABLATIONS.items():
                variants[f"deploy without {name}"] = undo(copy.deepcopy(deploy))
        inputs.update({k: x for k in variants if k not in inputs})
        agreement = {}
        for name, fn in variants.items():
            out = fn(inputs[name]).float()
            agreement[name] = cosine(out, reference_logits)
        times = interleave(variants, inputs, args.rounds)
        one = x[:1]
        latency = interleave({"as released": released, "deploy": deploy}, {"as released": one, "deploy": one},
                             args.latency_rounds)
    base = statistics.median(times["as released (reference)"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "median_s": med, "images_per_s": args.batch / med, "ratio": base / med,
                     "spread": (max(ts) - min(ts)) / med, "cosine_to_reference": agreement[name],
                     "target": TARGETS.get(name), "note": notes.get(name, "")})
    lat = {k: statistics.median(v) for k, v in latency.items()}
    report = {"spec": args.spec, "resolution": res, "batch": args.batch, "threads": args.threads,
              "rounds": args.rounds, "torch": torch.__version__, "machine": machine(), "rows": rows,
              "latency_p50_s": lat, "latency_ratio": lat["deploy"] / lat["as released"]}
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load:.1f} at the end"


def print_report(r: dict) -> None:
    print(f"{r['spec']} at {r['resolution']}, batch {r['batch']}, fp32 unless noted, {r['threads']} threads, "
          f"median of {r['rounds']} interleaved rounds; torch {r['torch']}; {r['machine']}")
    print("| variant | ms / batch | images/s | vs as released | spread | cos to fp32 ref | target | note |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for row in r["rows"]:
        target = f">= {row['target']}x {'met' if row['ratio'] >= row['target'] else 'NOT met'}" \
            if row["target"] else ""
        print(f"| {row['variant']} | {row['median_s'] * 1e3:.0f} | {row['images_per_s']:.1f} | "
              f"{row['ratio']:.2f}x | {row['spread'] * 100:.0f}% | {row['cosine_to_reference']:.6f} | {target} | "
              f"{row['note']} |")
    lat = r["latency_p50_s"]
    verdict = "met" if r["latency_ratio"] <= 0.7 else "NOT met"
    print(f"batch-1 latency p50: as released {lat['as released'] * 1e3:.1f} ms, deploy {lat['deploy'] * 1e3:.1f} ms "
          f"= {r['latency_ratio']:.2f}x (target <= 0.7x: {verdict})")


if __name__ == "__main__":
    main()
