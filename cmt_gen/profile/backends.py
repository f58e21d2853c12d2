"""What a profile measures: which form of the model (deploy or as built) on which runtime.

- form `deploy` (default): CMT models are measured as shipped, rewritten by
  `CMT.reparameterize()` (see `deploy.rewrite`); peers and training runs have no
  deploy form and are measured as built. `as-built` measures the training form.
- backend `eager`, `compile` (`torch.compile`; on CPU for inference with weight
  freezing, which lets inductor pre-pack weights for oneDNN) or `onnxruntime`
  (the deploy form exported to ONNX and run by onnxruntime's CPU provider). The
  time to compile or export is reported apart from the measurement.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FORMS = ("deploy", "as-built")
BACKENDS = ("eager", "compile", "onnxruntime")


def applies_deploy_form(model, settings) -> bool:
    return settings.form == "deploy" and settings.mode == "infer" and hasattr(model, "reparameterize") \
        and hasattr(model, "spec")


def prepare_model(model, target, settings):
    """The model in the settings' form, still on CPU in fp32 (a resident module is copied, not changed)."""
    if not applies_deploy_form(model, settings):
        return model
    from cmt_gen.deploy.attention_kernels import default_kernel

    if target.resident:
        model = copy.deepcopy(model)
    return model.eval().reparameterize(attention_kernel=default_kernel(settings.device_type))


def compile_options(settings) -> dict:
    """torch.compile arguments: the user's mode (CPU inference freezes weights, see `compile_model`)."""
    if settings.compile_mode not in (None, "default"):
        return {"mode": settings.compile_mode}
    return {}


def freezes_weights(settings) -> bool:
    """Inference on the host CPU, where inductor's frozen weights are pre-packed for oneDNN."""
    from cmt_gen.devices import device_for

    return device_for(settings.device_type).host and settings.mode == "infer"


class FrozenCompiled:
    """A compiled module whose (re)compilations run with inductor's weight freezing on.

    Freezing turns the weights into constants, so inductor pre-packs them for
    oneDNN and fuses activations into convolutions. `torch.compile(options=
    {"freezing": True})` is silently ignored by torch 2.14 when the first call
    runs under inference_mode (checked in tests/test_deploy.py), so the flag
    is set around each call instead: compilation happens inside a call.
    """

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def compile_model(model, settings):
    import torch

    compiled = torch.compile(model, **compile_options(settings))
    return FrozenCompiled(compiled) if freezes_weights(settings) else compiled


def make_runner(model, target, settings, example) -> tuple[Callable, float | None]:
    """A callable images -> output for the backend, and the seconds spent preparing it (export)."""
    if settings.backend == "onnxruntime":
        from cmt_gen.export.formats import load_runner, write_export
        from cmt_gen.export.graph import InferenceGraph

        start = time.perf_counter()
        graph = InferenceGraph(model).eval() if hasattr(model, "stages") else model.eval()
        stride = getattr(model, "total_stride", 32)
        # The session holds the whole (self-contained) model once created: the file goes on every exit path.
        with tempfile.TemporaryDirectory(prefix="cmt-gen-ort-") as folder:
            write_export("onnx", graph, example.float().cpu(), stride, Path(folder) / "model.onnx")
            runner = load_runner("onnx", Path(folder) / "model.onnx", settings.threads)
        return runner, time.perf_counter() - start
    if settings.compile:
        return compile_model(model, settings), None
    return model, None


def cpu_low_precision_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, bool]:
    """bf16 / fp16 units this CPU advertises in /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return {}
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {name: name in flags for name in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")}


def describe_cpu_units(units: dict[str, bool]) -> str:
    if not units:
        return "CPU flags unknown"
    have = [k for k, v in units.items() if v]
    return "bf16/fp16 units: " + (", ".join(have) if have else "none (no avx512_bf16, no AMX)")


def precision_verdicts(low_results, fp32_results, precision: str) -> list[str]:
    """One plain line per model: the low precision's speed against fp32 measured in the same run."""
    by_name = {r.name: r for r in fp32_results if r.ok}
    lines = []
    for r in low_results:
        ref = by_name.get(r.name)
        if not r.ok or ref is None or not ref.images_per_s:
            continue
        ratio = r.images_per_s / ref.images_per_s
        verdict = "SLOWER than fp32 on this device" if ratio < 1 else "faster than fp32"
        lines.append(f"{r.name}: {precision} {r.images_per_s:,.1f} img/s vs fp32 {ref.images_per_s:,.1f} img/s "
                     f"= {ratio:.2f}x, {verdict}")
    return lines
