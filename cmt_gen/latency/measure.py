"""Timing one building block on a device, with the profiler's clock and throughput loop.

A block is built alone (its constructor's arguments from a `PartShape`),
placed in the calibration's precision, fed a random input of the calibration's
batch, and timed under `inference_mode` exactly as `cmt-gen profile` times a
whole network (warm-up excluded, device synchronised, median over repeats).
torch is imported inside: this is the only module of the layer that needs it.
"""

from __future__ import annotations

from cmt_gen.latency.calibration_file import CalibratedBlockOptions
from cmt_gen.latency.features import PartShape
from cmt_gen.profile.settings import ProfileSettings
from cmt_gen.profile.timing import Clock, measure_throughput


class TorchPartTimer:
    """Seconds per call of one building block at the settings' batch, measured on the device."""

    def __init__(self, settings: ProfileSettings, options: CalibratedBlockOptions, *, min_time: float = 0.15,
                 repeats: int = 3, warmup: int = 1, form: str = "as-built"):
        self.settings, self.options, self.form = settings, options, form
        self.min_time, self.repeats, self.warmup = min_time, repeats, warmup
        self.clock = Clock(settings.device)

    def __call__(self, part: PartShape) -> float:
        module, inputs = build_part(part, self.options, self.settings.batch_size)
        return self.time_module(module, inputs, chunk_width=part.hidden if part.kind == "block" else None)

    def network(self, spec) -> float:
        """Seconds per call of a whole network (the calibration's reference networks), timed twice as long."""
        import torch

        from cmt_gen.model.network import build_model

        x = torch.randn(self.settings.batch_size, spec.in_channels, spec.resolution, spec.resolution)
        return self.time_module(build_model(spec), [x], 2 * self.min_time)

    def time_module(self, module, inputs: list, min_time: float | None = None,
                    chunk_width: int | None = None) -> float:
        """Place a module and its inputs for the settings, then time calls like the profiler does.

        `chunk_width` (a block's IRFFN width): call the deploy block on the image chunks its
        stage would split the batch into (`deploy.cache_chunks`), one after the other, so the
        part is timed as the whole network runs it.
        """
        import contextlib

        import torch

        s = self.settings
        amp = s.precision == "amp"
        dtype = torch.float32 if amp else getattr(torch, s.compute_dtype)
        module = module.eval()
        if self.form == "deploy":  # each part alone has its exact deploy rewrite, as the whole network does
            from cmt_gen.deploy.attention_kernels import default_kernel

            module.reparameterize(attention_kernel=default_kernel(s.device_type))
        module = module.to(device=s.device, dtype=dtype)
        inputs = [t.to(device=s.device, dtype=dtype) if torch.is_tensor(t) and t.is_floating_point() else t
                  for t in inputs]
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if amp:
                stack.enter_context(torch.autocast(s.device_type, dtype=getattr(torch, s.compute_dtype)))
            calls = [inputs]
            if chunk_width is not None and self.form == "deploy":
                calls = _as_the_stage_chunks(inputs, chunk_width)
            run = measure_throughput(lambda: [module(*args) for args in calls], s.batch_size, self.clock,
                                     warmup=self.warmup,
                                     iters=1, min_time=self.min_time if min_time is None else min_time,
                                     repeats=self.repeats)
        # Other load on the machine only ever slows a kernel down: the fastest repeat is the
        # least disturbed estimate of the block's own time.
        return s.batch_size / max(run.rates)


def _as_the_stage_chunks(inputs: list, width: int) -> list[list]:
    """A block's call arguments, once per image chunk its deploy stage would run (`DeployCMTStage`)."""
    from cmt_gen.deploy.cache_chunks import stage_chunks

    tokens, rest = inputs[0], inputs[1:]
    return [[part, *rest] for part in stage_chunks(tokens, width)]


def build_part(part: PartShape, options: CalibratedBlockOptions, batch: int):
    """The module of one building block and the arguments of its forward call."""
    import torch

    from cmt_gen.model import layers

    if part.kind == "stem":
        return layers.Stem(part.c_in, part.c_out), [torch.randn(batch, part.c_in, part.height, part.width)]
    if part.kind == "patch":
        return (layers.PatchAggregation(part.c_in, part.c_out),
                [torch.randn(batch, part.c_in, part.height, part.width)])
    if part.kind == "head":
        return (layers.ClassifierHead(part.c_in, part.c_out, part.classes),
                [torch.randn(batch, part.c_in, part.height, part.width)])
    if part.kind != "block":
        raise ValueError(f"unknown part kind {part.kind!r}")
    h, w, k = part.height, part.width, part.reduction
    block = layers.CMTBlock(part.c_out, part.heads, k, part.hidden, options=options.spec_options(),
                            qkv_bias=options.qkv_bias, grid=(h, w))
    has_stage_bias = options.position_bias.value in ("stage", "table")  # a table's lookup is a bias of this shape
    bias = torch.randn(part.heads, h * w, (h // k) * (w // k)) if has_stage_bias else None
    return block, [torch.randn(batch, h * w, part.c_out), h, w, bias]
