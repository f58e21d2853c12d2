"""`cmt-gen export`: build, load weights, reparameterize, write, reload, compare with eager."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmt_gen.errors import CmtGenError
from cmt_gen.export.formats import FORMATS, load_runner, write_export
from cmt_gen.export.graph import InferenceGraph

STEPS = 6  # what progress reports count to
DEFAULT_TOLERANCE = 1e-4  # max |exported - eager| relative to max |eager|, fp32


@dataclass
class SizeCheck:
    shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float


@dataclass
class ExportResult:
    format: str
    path: str
    tolerance: float
    checks: list[SizeCheck] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(c.max_rel_diff for c in self.checks)

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance


def check_sizes(channels: int, resolution: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Two inputs that differ in batch, height and width: the spec's size, and a larger, non-square one."""
    return [(2, channels, resolution, resolution), (1, channels, resolution + stride, resolution + 2 * stride)]


def export_spec(spec, fmt: str, output: Path, weights: Path | None = None,
                tolerance: float = DEFAULT_TOLERANCE, threads: int | None = None,
                inputs: Sequence[Path] = (), progress: Callable[[int, int, str], None] | None = None) -> ExportResult:
    """Write the deploy form of `spec` (with `weights`) as `fmt`, then prove the file runs and agrees.

    `inputs` are the files the spec was read from: like `weights`, never overwritten by the output.
    """
    from cmt_gen.files import check_output_target
    from cmt_gen.jobs.build import check_build_fits
    from cmt_gen.model.convert import load_checkpoint
    from cmt_gen.model.network import build_model

    if fmt not in FORMATS:
        raise CmtGenError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", field="--format")
    if not 0 < tolerance <= 1:  # NaN fails both
        raise CmtGenError(f"tolerance must be positive and at most 1 (relative to the largest output), got "
                          f"{tolerance}", field="--tolerance")
    output = check_output_target(output, inputs=[*inputs, weights])
    check_build_fits(spec, batch=2, force=None)  # the export's own forward passes, refused before any allocation
    step = progress or (lambda done, total, what: None)
    step(0, STEPS, "building" + (" and loading the weights" if weights is not None else ""))
    model = build_model(spec).eval()
    if weights is not None:
        load_checkpoint(model, weights)
    reference = InferenceGraph(model)
    sizes = check_sizes(model.spec.in_channels, model.spec.resolution, model.total_stride)
    torch.manual_seed(0)
    inputs = [torch.randn(s) for s in sizes]
    step(1, STEPS, "running the trained form at two sizes")
    with torch.inference_mode():
        expected = [reference(x) for x in inputs]
    if not all(torch.isfinite(y).all() for y in expected):  # a user's weights, not an export defect
        raise CmtGenError("the model's forward pass produces non-finite values, so no export can be checked "
                          "against it", source=str(weights) if weights is not None else spec.name)
    step(2, STEPS, "reparameterizing")
    model.reparameterize()
    graph = InferenceGraph(model).eval()
    step(3, STEPS, f"writing {fmt} (the exporter traces the whole network: up to a minute or two)")
    write_export(fmt, graph, inputs[0], model.total_stride, Path(output))
    step(4, STEPS, "reloading the file")
    run = load_runner(fmt, Path(output), threads)
    step(5, STEPS, "comparing with eager at two sizes")
    result = ExportResult(fmt, str(output), tolerance)
    with torch.inference_mode():
        for x, want in zip(inputs, expected, strict=True):
            got = run(x).float()
            diff = (got - want).abs().max().item()
            result.checks.append(SizeCheck(tuple(x.shape), diff, diff / max(want.abs().max().item(), 1e-12)))
    step(STEPS, STEPS, "done")
    return result
