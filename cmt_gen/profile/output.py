"""A profile run as JSON and CSV records, written atomically; each record names its spec and hash."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

CSV_COLUMNS = (
    "name", "kind", "source", "spec_hash", "resolution", "device", "device_name", "precision", "mode",
    "channels_last", "compile", "protocol", "batch_size", "batches_tried", "images_per_s", "images_per_s_min",
    "images_per_s_max", "spread", "noisy", "repeats_dropped", "load_during", "repeats", "latency_batch",
    "latency_p50_ms", "latency_p90_ms",
    "latency_samples", "peak_memory_bytes", "weights_bytes", "params", "macs_per_image", "macs_source",
    "achieved_macs_per_s", "peak_macs_per_s", "fraction_of_peak", "compile_seconds", "paper_throughput",
    "elapsed_s", "torch", "threads", "error", "notes",
)


def check_output_path(path: str | Path | None, suffix: str) -> Path | None:
    """Fail before any measurement if a results file cannot be written there."""
    if path is None:
        return None
    from cmt_gen.files import check_output_target

    path = Path(path)
    check_output_target(path, suffixes=(suffix,), what="these results")
    return path


def run_payload(run) -> dict[str, Any]:
    """Everything a run measured, as plain JSON-ready data."""
    from cmt_gen.profile.peers import throughput_ratios

    return {
        "tool": "cmt-gen profile",
        "interrupted": run.interrupted,
        "elapsed_s": run.elapsed_s,
        "warnings": run.warnings,
        "settings": run.settings.as_dict(),
        "env": run.env,
        "matmul_peak": run.matmul_peak.as_dict() if run.matmul_peak else None,
        "results": [_record(r) for r in run.results],
        "ratios": [r.as_dict() for r in throughput_ratios(run.results)],
        # a low precision on CPU: the same models timed in fp32 in the same run (see cli profile)
        "fp32_reference": getattr(run, "precision_check", None),
    }


def _record(result) -> dict[str, Any]:
    data = result.as_dict()
    data.pop("env", None)  # the run's environment is stated once at the top
    return data


def csv_text(run) -> str:
    """One row per model; lists are joined with ';' so every cell stays a scalar."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in run.results:
        row = result.as_dict()
        settings, env = row.pop("settings"), row.pop("env") or run.env
        row.update(
            device=settings["device"], precision=settings["precision"], mode=settings["mode"],
            channels_last=settings["channels_last"], compile=settings["compile"], protocol=settings["protocol"],
            device_name=env.get("device_name"), torch=env.get("torch"), threads=env.get("torch_threads"),
            repeats=";".join(f"{v:.4g}" for v in row.pop("images_per_s_repeats")),
            batches_tried=";".join(map(str, row["batches_tried"])), notes="; ".join(row["notes"]),
        )
        writer.writerow({k: row.get(k) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_outputs(run, json_path: Path | None = None, csv_path: Path | None = None) -> list[Path]:
    """Write the requested files atomically; returns what was written."""
    from cmt_gen.files import write_atomic

    written = []
    if json_path is not None:
        write_atomic(json_path, json.dumps(run_payload(run), indent=2, default=str) + "\n")
        written.append(json_path)
    if csv_path is not None:
        write_atomic(csv_path, csv_text(run))
        written.append(csv_path)
    return written
