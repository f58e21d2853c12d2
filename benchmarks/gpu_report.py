"""Merge the profile JSON files of `gpu_check.sh` into one JSON and one markdown table.

    python benchmarks/gpu_report.py OUTPUT_DIR

Every `*.json` written by `cmt-gen profile` in OUTPUT_DIR becomes one run; the
table has one row per (run, model) with images/s, batch-1 latency and the ratio
to the as-released fp32 reference (`released_swin_fp32`) of the same model. The
issue's GPU target (deploy form in bf16/AMP >= 3x as-released fp32) is checked
per CMT model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REFERENCE_RUN = "released_swin_fp32"
TARGET = 3.0


def load_runs(folder: Path) -> dict[str, dict]:
    runs = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "gpu_check.json":
            continue
        data = json.loads(path.read_text())
        if data.get("tool") == "cmt-gen profile":
            runs[path.stem] = data
    return runs


def build_report(runs: dict[str, dict]) -> dict:
    reference = {r["name"]: r.get("images_per_s") for r in runs.get(REFERENCE_RUN, {}).get("results", [])}
    rows, verdicts = [], []
    for run_name, run in runs.items():
        s = run["settings"]
        for r in run["results"]:
            ref = reference.get(r["name"])
            ratio = r["images_per_s"] / ref if r.get("images_per_s") and ref else None
            rows.append({"run": run_name, "model": r["name"], "form": s.get("form"), "precision": s["precision"],
                         "batch": r.get("batch_size"), "images_per_s": r.get("images_per_s"),
                         "latency_p50_ms": r.get("latency_p50_ms"), "vs_released_fp32": ratio,
                         "error": r.get("error")})
            low = s["precision"] in ("bf16", "amp") and s.get("form") == "deploy"
            if low and ratio is not None and r["name"].startswith("cmt"):
                verdicts.append({"run": run_name, "model": r["name"], "ratio": ratio, "met": ratio >= TARGET})
    env = next(iter(runs.values()))["env"] if runs else {}
    return {"device": env.get("device_name"), "torch": env.get("torch"), "rows": rows, "target": TARGET,
            "bf16_amp_vs_released_fp32": verdicts}


def markdown(report: dict) -> str:
    lines = [f"GPU check on {report['device']} (torch {report['torch']})", "",
             "| run | model | form | precision | batch | img/s | latency b1 p50 ms | vs as-released fp32 |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["error"]:
            lines.append(f"| {r['run']} | {r['model']} | {r['form']} | {r['precision']} | - | failed: "
                         f"{r['error'][:60]} | - | - |")
            continue
        ratio = f"{r['vs_released_fp32']:.2f}x" if r["vs_released_fp32"] else "-"
        lat = f"{r['latency_p50_ms']:.2f}" if r["latency_p50_ms"] else "-"
        lines.append(f"| {r['run']} | {r['model']} | {r['form']} | {r['precision']} | {r['batch']} | "
                     f"{r['images_per_s']:,.1f} | {lat} | {ratio} |")
    lines += ["", f"deploy form in bf16/AMP vs as-released fp32 (target >= {report['target']}x):"]
    for v in report["bf16_amp_vs_released_fp32"]:
        lines.append(f"- {v['run']} {v['model']}: {v['ratio']:.2f}x {'met' if v['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    report = build_report(load_runs(folder))
    (folder / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "gpu_check.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
