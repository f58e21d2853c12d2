"""`predict_latency(spec, calibration)`: a spec's batch latency from its building blocks, without torch.

A CMT runs its stem, then per stage a patch aggregation and `depth` identical
blocks, then its head; so its latency is the sum of those parts' fitted
latencies, each block counted `depth` times. Nothing is built or timed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmt_gen.devices.cpu import caps_text
from cmt_gen.latency.calibration_file import CalibratedBlockOptions, Calibration, CalibrationError, load_calibration
from cmt_gen.latency.features import PartShape, select, spec_parts
from cmt_gen.latency.fit import predict


@dataclass
class LatencyPrediction:
    """Predicted seconds of one batch, in total and per part (label, calls, seconds of all calls)."""

    name: str
    batch_size: int
    seconds: float
    parts: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        return self.seconds * 1000

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.seconds

    def as_dict(self) -> dict:
        return {"name": self.name, "batch_size": self.batch_size, "latency_ms": self.latency_ms,
                "images_per_s": self.images_per_s,
                "parts": [{"part": label, "calls": n, "ms": s * 1000} for label, n, s in self.parts]}


def part_seconds(calibration: Calibration, part: PartShape) -> float:
    """Seconds one call of a building block takes inside a network, at the calibration's batch:
    its fitted time alone, times the calibration's network factor."""
    model = calibration.parts[part.kind]
    features = part.features(calibration.settings.batch_size, calibration.channel_block, calibration.padded_kinds)
    return calibration.network_factor * predict(model.coefficients, select(features, part.kind, model.features))


def run_settings(calibration: Calibration) -> dict:
    """What a prediction holds for: the calibration's run settings, and how a plain script reproduces them."""
    from cmt_gen.profile.host_allocator import RETAIN_ENVIRONMENT

    s = calibration.settings
    form = "model.reparameterize() (deploy form)" if s.form == "deploy" else "the model as built (no reparameterize)"
    steps = [f"batch {s.batch_size}", f"{s.precision}", form]
    if s.threads:
        steps.append(f"torch.set_num_threads({s.threads})")
    if s.allocator == "retain":
        steps.append(f"{RETAIN_ENVIRONMENT} in the environment (glibc; or jemalloc/tcmalloc preloaded)")
    caps = calibration.environment.get("instruction_set_caps") if s.device_type == "cpu" else None
    if caps and isinstance(caps, dict):
        steps.append(f"{caps_text(caps)} in the environment (as calibrated)")
    return {"device": s.device, "machine": calibration.machine, "precision": s.precision,
            "batch_size": s.batch_size, "threads": s.threads, "form": s.form, "allocator": s.allocator,
            "torch": calibration.torch_version, "calibrated": calibration.created,
            "plain_script": "; ".join(steps)}


def check_block_options(spec, calibration: Calibration, source: str = "calibration") -> None:
    """Refuse a spec whose blocks run other kernels than those calibrated (attention, LPU, K/V reduction...)."""
    held = calibration.block_options.model_dump(mode="json")
    wanted = CalibratedBlockOptions.of_spec(spec).model_dump(mode="json")
    for key, value in wanted.items():
        if held[key] != value:
            raise CalibrationError(
                f"spec {spec.name!r} has {key} {value!r} but the blocks were calibrated with "
                f"{held[key]!r}; calibrate with those block options", source=source, field="block_options")


def predict_latency(spec, calibration: Calibration | str | Path) -> LatencyPrediction:
    """Predicted latency of one batch (the calibration's batch size) at the spec's resolution.

    `spec` is a CMTSpec, bundled name, path or dict; `calibration` a `Calibration`
    or the path of a file written by `cmt-gen calibrate`.
    """
    from cmt_gen.spec.schema import CMTSpec

    source = "calibration"
    if not isinstance(calibration, Calibration):
        source = str(calibration)
        calibration = load_calibration(calibration)
    if not isinstance(spec, CMTSpec):
        from cmt_gen.spec.loading import load_spec

        spec = load_spec(spec)
    check_block_options(spec, calibration, source)
    parts: list[tuple[str, int, float]] = []
    stage = -1
    for part, calls in spec_parts(spec):
        if part.kind == "patch":
            stage += 1
        label = part.kind if part.kind in ("stem", "head") else f"stage{stage} {part.kind}"
        parts.append((label, calls, calls * part_seconds(calibration, part)))
    return LatencyPrediction(spec.name, calibration.settings.batch_size, sum(s for _, _, s in parts), parts)
