"""Speed of the deploy form against the as-released CMT, in one interleaved run (issue 10).

Every variant runs the same weights on the same input. One round times one batch of
each variant in turn (A B C ... A B C ...), so load from other processes on a shared
machine falls on all of them alike; the table gives each variant's median over the
rounds and its ratio to the reference.

Two worker processes, driven in lockstep (only one computes at a time), hold the
variants, because the host allocator policy is process-wide (`cmt_gen.profile.host_allocator`):

- `system` worker (the C library's allocator defaults, as the authors' code runs):
  the reference, i.e. the as-released form (`block.attention=math`, not
  reparameterized); our as-built default (SDPA); the deploy form;
- `retain` worker (glibc keeps freed memory, what `cmt-gen profile` uses on Linux):
  the as-released form again (the same-runtime reference), the deploy form in eager,
  `+ compile` (`torch.compile`, inductor with weight freezing; compile time apart),
  `onnxruntime` (the exported deploy form), bf16 casts of both forms, and the
  ablation rows (the deploy form with one rewrite undone at a time, `ABLATIONS`).

Two ratio columns: against the as-released form under the system allocator, and
against it under the same allocator as the row (the model rewrites alone).
Batch-1 latency p50 comes from interleaved calls of the same workers.

    python benchmarks/bench_inference.py                      # CMT-S, 224, batch 16, 2 threads
    python benchmarks/bench_inference.py --rounds 3 --no-compile --no-onnx   # quicker
    python benchmarks/bench_inference.py --kernels            # the attention / linear kernel choice
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import multiprocessing
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

INFERENCE_MODE_BUILT = "deploy, built under inference_mode, system allocator"
TARGETS = {"deploy": 1.5, "deploy + compile": 2.0, "deploy, system allocator": 1.5, INFERENCE_MODE_BUILT: 1.5}
WORTH = 0.02  # an ablated rewrite keeps its place if undoing it costs at least this much


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


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min().item()


def onnx_runner(graph: nn.Module, x: torch.Tensor, stride: int, threads: int, folder: str):
    from cmt_gen.export.formats import load_runner, write_export

    path = Path(folder) / "deploy.onnx"
    write_export("onnx", graph, x, stride, path)
    return load_runner("onnx", path, threads)


def kernel_report(threads: int, batch: int) -> None:
    """Attention with a float bias and one linear, at CMT-S shapes, by each implementation."""
    from cmt_gen.deploy import onednn
    from cmt_gen.deploy.attention_kernels import attend

    torch.set_num_threads(threads)
    print(f"attention, float bias, fp32, batch {batch}, {threads} threads (ms, median of 7):")
    for heads, n, m, d in ((1, 3136, 49, 64), (2, 784, 49, 64), (4, 196, 49, 64), (8, 49, 49, 64)):
        q, k, v = (torch.randn(batch, heads, s, d) for s in (n, m, m))
        bias = torch.randn(heads, n, m)
        row = {kernel: median_call(attend, q, k, v, bias, kernel) for kernel in ("sdpa", "matmul")}
        print(f"  heads {heads} N {n:5d} M {m}: " + "  ".join(f"{k} {t * 1e3:7.2f}" for k, t in row.items()))
    x = torch.randn(batch, 196, 256)
    w, b = torch.randn(1024, 256), torch.randn(1024)  # made outside inference_mode, so oneDNN may pack w
    with torch.inference_mode():  # with autograd on, onednn.linear steps aside for F.linear
        row = {"F.linear + F.gelu": median_call(lambda: F.gelu(F.linear(x, w, b))),
               "oneDNN linear+gelu": median_call(onednn.linear, x, w, b, "gelu")}
    print("linear 256 -> 1024 + GELU on (B, 196, 256) tokens (ms, median of 7):")
    for name, seconds in row.items():
        print(f"  {name:20s} {seconds * 1e3:7.2f}")


# The worker that ran last keeps its OpenMP threads spinning for a moment after its call; starting the
# other worker at once would share the cores with that spin (it slowed batch-1 calls by ~15% here).
SETTLE_S = 0.05
REFERENCE = "as released (reference)"
SAME_RUNTIME_REFERENCE = "as released, retain allocator"
# batch-1 latency rows: label -> variant (whose worker runs it)
LATENCY = {"as released": REFERENCE, "deploy": "deploy", "as released, retain allocator": SAME_RUNTIME_REFERENCE,
           "deploy, system allocator": "deploy, system allocator"}


def parse(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def released_model(args) -> nn.Module:
    """The as-released form with trained-looking BN statistics (so the folds do real work); seeded."""
    torch.manual_seed(0)
    released = build_model(args.spec, overrides=["block.attention=math"]).eval()
    for module in released.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return released


def make_variants(args, allocator: str) -> tuple[dict, dict, dict, torch.Tensor]:
    """This worker's variants (name -> callable), their inputs, notes, and the fp32 reference logits."""
    released = released_model(args)
    deploy = copy.deepcopy(released).reparameterize()
    res = released.spec.resolution
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, res, res)
    notes: dict[str, str] = {}
    if allocator == "system":
        as_built = copy.deepcopy(released)
        for module in as_built.modules():
            if hasattr(module, "fused"):
                module.fused = True
        with torch.inference_mode():  # as a user's script may: built, loaded and rewritten under inference_mode
            inside = released_model(args).reparameterize()
        variants = {REFERENCE: released, "as built (SDPA)": as_built, "deploy, system allocator": deploy,
                    INFERENCE_MODE_BUILT: inside}
        with torch.inference_mode():
            return variants, dict.fromkeys(variants, x), notes, released(x)
    variants = {SAME_RUNTIME_REFERENCE: released, "deploy": deploy}
    inputs = dict.fromkeys(variants, x)
    if not args.no_compile:
        from cmt_gen.profile.backends import FrozenCompiled

        start = time.perf_counter()
        compiled = FrozenCompiled(torch.compile(InferenceGraph(deploy)))
        with torch.inference_mode():
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
    with torch.inference_mode():
        return variants, inputs, notes, released(x)


def worker(conn, argv: list[str], allocator: str) -> None:
    """Build this allocator's variants, report them, then time one call per request until told to stop."""
    from cmt_gen.profile.host_allocator import set_policy
    from cmt_gen.profile.onednn_cache import enlarge_primitive_cache

    enlarge_primitive_cache()
    args = parse(argv)
    if allocator == "retain":
        set_policy("retain")  # the system worker never calls mallopt: glibc's own dynamic defaults
    torch.set_num_threads(args.threads)
    variants, inputs, notes, reference = make_variants(args, allocator)
    with torch.inference_mode():
        agreement = {name: cosine(fn(inputs[name]).float(), reference) for name, fn in variants.items()}
        conn.send((list(variants), notes, agreement))
        while True:
            request = conn.recv()
            if request is None:
                return
            name, batch_one = request
            x = inputs[name][:1] if batch_one else inputs[name]
            conn.send(timed(variants[name], x))


class WorkerDied(RuntimeError):
    pass


def receive(pipe, process) -> object:
    """The worker's next message; a worker that died ends the benchmark with its exit code, never a hang."""
    while not pipe.poll(0.5):
        if not process.is_alive():
            raise WorkerDied(f"a benchmark worker died (exit code {process.exitcode}); its error is printed above")
    return pipe.recv()


def lockstep(calls: dict[str, tuple], rounds: int, batch_one: bool = False) -> dict[str, list[float]]:
    """label -> (worker pipe, its process, variant): one untimed call each, then `rounds` rounds of one timed
    call per label in turn. Only one worker computes at any time; the other waits on its pipe."""
    def call(label: str) -> float:
        pipe, process, name = calls[label]
        time.sleep(SETTLE_S)
        pipe.send((name, batch_one))
        return receive(pipe, process)

    for label in calls:
        call(label)
    times = {label: [] for label in calls}
    for _ in range(rounds):
        for label in calls:
            times[label].append(call(label))
    return times


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.kernels:
        kernel_report(args.threads, args.batch)
        return {}
    context = multiprocessing.get_context("spawn")
    owners, notes, agreement, processes, pipes = {}, {}, {}, [], []
    try:
        for allocator in ("system", "retain"):
            here, there = context.Pipe()
            process = context.Process(target=worker, args=(there, sys.argv[1:] if argv is None else argv, allocator))
            process.start()
            processes.append(process)
            pipes.append(here)
            names, worker_notes, worker_agreement = receive(here, process)
            owners.update(dict.fromkeys(names, (here, process)))
            notes.update(worker_notes)
            agreement.update(worker_agreement)
        times = lockstep({name: (*owner, name) for name, owner in owners.items()}, args.rounds)
        latency = lockstep({label: (*owners[name], name) for label, name in LATENCY.items()}, args.latency_rounds,
                           batch_one=True)
    except WorkerDied as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(None)
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()
    report = make_report(args, times, latency, notes, agreement)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} CPUs ({cpu_features(flags)}), load average {load:.1f} at the end"


def cpu_features(flags: set[str]) -> str:
    """The instruction sets the fast paths depend on, and what torch and oneDNN make of them here."""
    from cmt_gen.deploy import onednn

    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "avx_ne_convert", "amx_bf16", "amx_tile", "neon", "asimd")
    have = [f for f in wanted if f in flags] or ["flags unknown"]
    bf16 = onednn._HAVE_ONEDNN and onednn.linear_case_ok(torch.bfloat16)
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return f"{' '.join(have)}; ATen {capability}; oneDNN bf16 path {'yes' if bf16 else 'no'}"


def make_report(args, times: dict, latency: dict, notes: dict, agreement: dict) -> dict:
    base = statistics.median(times[REFERENCE])
    same = statistics.median(times[SAME_RUNTIME_REFERENCE])
    system_rows = {REFERENCE, "as built (SDPA)", "deploy, system allocator", INFERENCE_MODE_BUILT}
    deploy = statistics.median(times["deploy"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "allocator": "system" if name in system_rows else "retain",
                     "median_s": med, "images_per_s": args.batch / med, "ratio": base / med,
                     "ratio_same_allocator": (base if name in system_rows else same) / med,
                     "spread": (max(ts) - min(ts)) / med, "cosine_to_reference": agreement[name],
                     "target": TARGETS.get(name), "note": notes.get(name, ""),
                     "worth": med / deploy - 1 if name.startswith("deploy without")
                     else None})
    lat = {k: statistics.median(v) for k, v in latency.items()}
    return {"spec": args.spec, "resolution": build_model(args.spec).spec.resolution, "batch": args.batch,
            "threads": args.threads, "rounds": args.rounds, "torch": torch.__version__, "machine": machine(),
            "rows": rows, "latency_p50_s": lat, "latency_ratio": lat["deploy"] / lat["as released"],
            "latency_ratio_same_allocator": lat["deploy"] / lat["as released, retain allocator"]}


def worth(row: dict) -> str:
    """For an ablation row: how much slower the deploy form is without that rewrite, and whether it pays."""
    if row.get("worth") is None:
        return ""
    return f"{row['worth'] * 100:+.1f}%: {'keep' if row['worth'] >= WORTH else 'below 2%'}"


def verdict(ratio: float, target: float) -> str:
    return f">= {target}x {'met' if ratio >= target else 'NOT met'}"


def print_report(r: dict) -> None:
    print(f"{r['spec']} at {r['resolution']}, batch {r['batch']}, fp32 unless noted, {r['threads']} threads, "
          f"median of {r['rounds']} interleaved rounds; torch {r['torch']}; {r['machine']}")
    print("| variant | allocator | ms / batch | images/s | vs as released | vs as released, same allocator | "
          "spread | cos to fp32 ref | target (vs as released / same allocator) | the rewrite's worth | note |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for row in r["rows"]:
        target = f"{verdict(row['ratio'], row['target'])} / {verdict(row['ratio_same_allocator'], row['target'])}" \
            if row["target"] else ""
        print(f"| {row['variant']} | {row['allocator']} | {row['median_s'] * 1e3:.0f} | {row['images_per_s']:.1f} | "
              f"{row['ratio']:.2f}x | {row['ratio_same_allocator']:.2f}x | {row['spread'] * 100:.0f}% | "
              f"{row['cosine_to_reference']:.6f} | {target} | {worth(row)} | {row['note']} |")
    lat = r["latency_p50_s"]
    print("batch-1 latency p50: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in lat.items()))
    for key, what in (("latency_ratio", "vs as released"), ("latency_ratio_same_allocator", "same allocator")):
        print(f"  deploy {what}: {r[key]:.2f}x (target <= 0.7x: {'met' if r[key] <= 0.7 else 'NOT met'})")


if __name__ == "__main__":
    main()
