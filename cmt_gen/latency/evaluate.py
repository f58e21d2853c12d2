"""Predictions beside measurements: what `cmt-gen predict --measure` and the benchmark report.

Measuring uses the profiler (`run_profiles`) under exactly the calibration's
settings (device, precision, batch size, threads), so a prediction and its
measurement differ only by the model's error and the machine's noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cmt_gen.latency.calibration_file import Calibration
from cmt_gen.latency.predict import LatencyPrediction, predict_latency


@dataclass
class PredictionRow:
    """One spec: its cost, predicted speed and, once measured, the profiler's median images/s."""

    spec: object  # CMTSpec
    macs: int
    params: int
    prediction: LatencyPrediction
    measured_images_per_s: float | None = None
    measure_error: str | None = None
    machine_speed: float | None = None  # the drift reference's seconds now / at calibration (1.1: 10% slower)

    @property
    def name(self) -> str:
        return self.prediction.name

    @property
    def error(self) -> float | None:
        """Relative error of predicted throughput against measured: +0.05 predicts 5% too fast."""
        if not self.measured_images_per_s:
            return None
        return self.prediction.images_per_s / self.measured_images_per_s - 1

    @property
    def anchored_error(self) -> float | None:
        """The error once the prediction is scaled to the machine's speed now (`machine_speed`)."""
        if self.error is None or not self.machine_speed:
            return None
        return (1 + self.error) / self.machine_speed - 1

    def as_dict(self) -> dict:
        # `source`: these figures are a calibration's predictions; readers of measurements (compare --profile)
        # take only the measured ones.
        row = {"name": self.name, "source": "predicted", "latency_ms": self.prediction.latency_ms,
               "images_per_s": self.prediction.images_per_s, "batch_size": self.prediction.batch_size,
               "macs": self.macs, "params": self.params, "resolution": self.spec.resolution}
        if self.measured_images_per_s is not None:
            row.update(measured_latency_ms=self.prediction.batch_size / self.measured_images_per_s * 1000,
                       measured_images_per_s=self.measured_images_per_s, error=self.error)
        if self.machine_speed is not None:
            row.update(machine_speed=self.machine_speed, anchored_error=self.anchored_error)
        if self.measure_error:
            row["measure_error"] = self.measure_error
        return row


def predict_rows(specs: Sequence, calibration: Calibration) -> list[PredictionRow]:
    from cmt_gen.cost.analytic import analytic_cost
    from cmt_gen.spec.loading import load_spec
    from cmt_gen.spec.schema import CMTSpec

    rows = []
    for item in specs:
        spec = item if isinstance(item, CMTSpec) else load_spec(item)
        cost = analytic_cost(spec)
        rows.append(PredictionRow(spec, cost.macs, cost.params, predict_latency(spec, calibration)))
    return rows


def measure_rows(rows: Sequence[PredictionRow], calibration: Calibration, *, min_time: float | None = None,
                 repeats: int | None = None, progress: Callable[[int, str], None] | None = None,
                 force: bool = False, source: str = "calibration", anchor: bool = True) -> list[str]:
    """Measure each row's spec under the calibration's settings and record its images/s.

    With a calibration that timed the drift reference (and `anchor`), each spec is timed in turn with
    that reference (`TorchPartTimer.paired`, the calibration's own clock and statistic), and the row
    records how fast the machine runs now beside the calibration (`machine_speed`); otherwise the
    profiler's median images/s. With torch loaded the device itself can be identified (a GPU's name), so
    the calibration is checked against it once more; returns the warnings if forced.
    """
    from cmt_gen.latency.calibration_file import check_compatible

    if anchor and calibration.reference_seconds:
        warnings = check_compatible(calibration, source=source, force=force)
        _measure_anchored(rows, calibration, min_time, progress)
        return warnings
    from cmt_gen.profile.runner import run_profiles
    from cmt_gen.profile.targets import target_from_spec

    s = calibration.settings
    settings = _calibrated_settings(calibration, min_time=min_time, repeats=repeats)
    warnings = check_compatible(calibration, source=source, force=force)
    run = run_profiles([target_from_spec(r.spec) for r in rows], settings, progress=progress, measure_peak=False)
    for row, result in zip(rows, run.results, strict=False):
        if result.ok and result.batch_size == s.batch_size:
            row.measured_images_per_s = result.images_per_s
        else:
            row.measure_error = result.error or f"measured at batch {result.batch_size}, not {s.batch_size}"
    return warnings


def _calibrated_settings(calibration: Calibration, **timing):
    """The profile settings a calibration was made under (device, precision, batch, threads, form, allocator)."""
    from cmt_gen.profile.settings import resolve_settings

    s = calibration.settings
    return resolve_settings(device=s.device, precision=s.precision, batch_size=s.batch_size, threads=s.threads,
                            form=s.form, allocator=s.allocator, **timing)


ANCHORED_MIN_TIME = 0.15  # seconds per timed round of the reference (the spec's rounds last twice as long)


def _measure_anchored(rows: Sequence[PredictionRow], calibration: Calibration, min_time: float | None,
                      progress: Callable[[int, str], None] | None) -> None:
    """Each row's spec timed in turn with the drift reference, under the calibration's settings."""
    from cmt_gen.latency.calibration_file import CalibratedBlockOptions
    from cmt_gen.latency.drift import DRIFT_REFERENCE, reference_spec
    from cmt_gen.latency.measure import TorchPartTimer
    from cmt_gen.profile.bench import run_environment
    from cmt_gen.profile.runner import failure_text

    s = calibration.settings
    settings = _calibrated_settings(calibration)
    reference = reference_spec()
    with run_environment(settings):
        timer = TorchPartTimer(settings, CalibratedBlockOptions(), form=s.form,
                               min_time=ANCHORED_MIN_TIME if min_time is None else min_time)
        for i, row in enumerate(rows):
            if progress:
                progress(i, f"timing with the drift reference {DRIFT_REFERENCE[0]}")
            try:
                seconds, ref_seconds = timer.paired(row.spec, reference)
            except Exception as exc:  # noqa: BLE001 - one spec's failure is its row's, the others still run
                row.measure_error = failure_text(exc)
                continue
            row.measured_images_per_s = s.batch_size / seconds
            row.machine_speed = ref_seconds / calibration.reference_seconds


def summary(rows: Sequence[PredictionRow], within: float = 0.10) -> dict:
    """Share of measured rows within +-`within`, and the median and worst absolute error."""
    errors = [abs(r.error) for r in rows if r.error is not None]
    if not errors:
        return {"measured": 0}
    return {"measured": len(errors), "within": within,
            "fraction_within": sum(e <= within for e in errors) / len(errors),
            "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors)}
