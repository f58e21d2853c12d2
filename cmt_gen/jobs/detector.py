"""What `cmt-gen build` and `cmt-gen profile` do with a detector spec.

`build`: guard memory from the analytic count, build the torchvision detector,
load released CMT weights into its backbone (neck and heads start fresh), run
one image at the spec's input size, save the weights atomically. `profile`:
images/s, seconds per call and peak memory of the whole detector in eval mode
(normalisation, backbone, FPN, heads, anchors, NMS and, for Mask R-CNN, mask
pasting) at batch 1 and 2 by default, timed with the device's own clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cmt_gen.cost.memory_guard import check_detector_fits
from cmt_gen.errors import CmtGenError
from cmt_gen.spec.detector import DetectorSpec

DEFAULT_BATCHES = (1, 2)


@dataclass
class DetectorBuildResult:
    params: int
    analytic_params: int
    detections: list[int]  # boxes returned per image of the dummy forward
    forward_seconds: float
    weights_loaded: str | None
    saved_to: str | None


@dataclass
class DetectorProfile:
    spec: str
    kind: str
    device: str
    batch: int
    height: int
    width: int
    images_per_s: float
    seconds_per_call: float
    peak_bytes: int | None
    memory_method: str
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def _images(spec: DetectorSpec, batch: int, device: str = "cpu") -> list:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, spec.input.height, spec.input.width, generator=generator).to(device) for _ in range(batch)]


def run_detector_build(spec: DetectorSpec, weights: str | Path | None = None, output: str | Path | None = None,
                       force: bool = False) -> DetectorBuildResult:
    """Build the detector, load backbone weights, run one image, save; the numel must equal the analytic count."""
    import torch

    from cmt_gen.cost.detector import detector_cost
    from cmt_gen.detection.build import build_detector
    from cmt_gen.jobs.build import check_output_path, save_weights

    out_path = check_output_path(output, inputs=[weights])
    check_detector_fits(spec, 1, force, "building and running the detector")
    model = build_detector(spec, backbone_weights=weights)
    params = sum(p.numel() for p in model.parameters())
    analytic = detector_cost(spec).params
    if params != analytic:  # the two descriptions of a detector must never drift
        raise RuntimeError(f"built detector has {params} parameters, analytic count {analytic}")
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model(_images(spec, 1))
    seconds = time.perf_counter() - start
    if any(not torch.isfinite(o["boxes"]).all() for o in outputs):
        raise CmtGenError("the forward pass produced non-finite boxes", source=spec.name)
    if out_path is not None:
        save_weights(model, out_path)
    return DetectorBuildResult(params, analytic, [len(o["boxes"]) for o in outputs], seconds,
                               str(weights) if weights else None, str(out_path) if out_path else None)


def profile_detector(spec: DetectorSpec, device: str = "auto", batches: Sequence[int] = DEFAULT_BATCHES,
                     warmup: int | None = None, iters: int | None = None, repeats: int | None = None,
                     force: bool = False) -> list[DetectorProfile]:
    """Eval-mode images/s and peak memory of the whole detector at the spec's input size, per batch size.

    Timing follows the profiler's per-device defaults (`profile.settings.DEVICE_DEFAULTS`): `warmup`
    untimed calls, then `repeats` (at most 3 by default: a 1280x800 call takes seconds on a CPU) of
    `iters` timed calls each; images/s is from the median repeat.
    """
    import statistics

    import torch

    from cmt_gen.detection.build import build_detector
    from cmt_gen.devices import device_for, resolve
    from cmt_gen.profile.settings import DEVICE_DEFAULTS

    name = resolve(device)
    dev = device_for(name)
    defaults = DEVICE_DEFAULTS[dev.kind]
    warmup = defaults.warmup if warmup is None else warmup
    iters = max(1, defaults.iters) if iters is None else iters
    repeats = min(defaults.repeats, 3) if repeats is None else repeats
    for value, flag, low in ((warmup, "--warmup", 0), (iters, "--iters", 1), (repeats, "--repeats", 1)):
        if value < low:
            raise CmtGenError(f"{flag} is at least {low}, got {value}", field=flag)
    for batch in batches:
        if batch < 1:
            raise CmtGenError(f"a batch holds at least one image, got {batch}", field="--batch-size")
        check_detector_fits(spec, batch, force, f"profiling {spec.name}")
    meter = dev.memory_meter(name)
    meter.start()
    model = build_detector(spec).eval().to(name)
    records = []
    for batch in batches:
        images = _images(spec, batch, name)
        with torch.inference_mode(), dev.run_flags():
            for _ in range(warmup):
                model(images)
            meter.reset_peak()
            times = [dev.time_calls(name, lambda images=images: model(images), iters) / iters for _ in range(repeats)]
        seconds = statistics.median(times)
        records.append(DetectorProfile(spec.name, spec.kind.value, name, batch, spec.input.height, spec.input.width,
                                       batch / seconds, seconds, meter.peak_bytes(), meter.method,
                                       torch.get_num_threads()))
    return records
