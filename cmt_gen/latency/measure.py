"""Timing one building block on a device, with the profiler's clock and throughput loop.

A block is built alone (its constructor's arguments from a `PartShape`),
placed in the calibration's precision, fed a random input of the calibration's
batch, and timed under `inference_mode` exactly as `cmt-gen profile` times a
whole network (warm-up excluded, device synchronised, median over repeats).
torch is imported inside: this is the only module of the layer that needs it.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator

from cmt_gen.devices.cpu import ONEDNN_ISA_VARIABLES, instruction_set_caps
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
        if self.form == "deploy" and part.kind in ("patch", "head"):
            inputs = [_as_the_networks_map(inputs[0]), *inputs[1:]]
        return self.time_module(module, inputs, chunk_width=part.hidden if part.kind == "block" else None)

    def network(self, spec) -> float:
        """Seconds per call of a whole network (the calibration's networks), timed twice as long."""
        with self.prepared_network(spec) as step:
            return self.time_step(step, 2 * self.min_time)

    def paired(self, spec, reference, rounds: int = 5) -> tuple[float, float]:
        """Median seconds per call of `spec` and of `reference` (a network), timed in turn: reference, spec,
        reference, ... (`rounds` of the spec, one more of the reference), so both see the same machine.

        What `predict --measure` reports: the spec's time, and the machine's speed now beside the
        calibration's own timing of the same reference (see `latency.drift`).
        """
        with self.prepared_network(reference) as ref_step, self.prepared_network(spec) as spec_step:
            for _ in range(self.warmup):
                spec_step()
                ref_step()
            ref_times = [self.time_step(ref_step, self.min_time, warmup=0, repeats=1)]
            spec_times = []
            for _ in range(rounds):
                spec_times.append(self.time_step(spec_step, 2 * self.min_time, warmup=0, repeats=1))
                ref_times.append(self.time_step(ref_step, self.min_time, warmup=0, repeats=1))
        return statistics.median(spec_times), statistics.median(ref_times)

    def prepared_network(self, spec):
        """A context giving a zero-argument step that runs the built network once, placed for the settings."""
        import torch

        from cmt_gen.model.network import build_model

        x = torch.randn(self.settings.batch_size, spec.in_channels, spec.resolution, spec.resolution)
        return self.prepared(build_model(spec), [x])

    def time_module(self, module, inputs: list, min_time: float | None = None,
                    chunk_width: int | None = None) -> float:
        """Place a module and its inputs for the settings, then time calls like the profiler does.

        `chunk_width` (a block's IRFFN width): call the deploy block on the image chunks its
        stage would split the batch into (`deploy.cache_chunks`), one after the other, so the
        part is timed as the whole network runs it.
        """
        with self.prepared(module, inputs, chunk_width) as step:
            return self.time_step(step, min_time)

    @contextlib.contextmanager
    def prepared(self, module, inputs: list, chunk_width: int | None = None) -> Iterator[Callable[[], object]]:
        """The module in its form, precision and device, and a step calling it under inference mode."""
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
            yield lambda: [module(*args) for args in calls]

    def time_step(self, step: Callable[[], object], min_time: float | None = None, *, warmup: int | None = None,
                  repeats: int | None = None) -> float:
        """Seconds per call of `step`, as the profiler times a network: after warm-up, the median repeat."""
        s = self.settings
        run = measure_throughput(step, s.batch_size, self.clock, warmup=self.warmup if warmup is None else warmup,
                                 iters=1, min_time=self.min_time if min_time is None else min_time,
                                 repeats=self.repeats if repeats is None else repeats)
        # The median repeat, as the profiler reports a whole network (`cmt-gen profile`, `predict --measure`):
        # a calibration fitted to the fastest repeats predicted the typical call several percent too fast on
        # a machine whose calls jitter, and a burst of other load still moves a median of three at most to
        # the next repeat.
        return s.batch_size / statistics.median(run.rates)


def _as_the_networks_map(x):
    """A map laid out as the deploy network hands it to a patch aggregation or the head: channels-last (the
    stem's output, or the previous stage's tokens viewed as a map). Their deploy forms make their input
    channels-last, which copies nothing in the network; timed on a contiguous NCHW map, a part paid for a
    copy the network never makes."""
    import torch

    return x.contiguous(memory_format=torch.channels_last)


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


# torch's CPU capability (what its kernels dispatch to) -> the channel block of oneDNN's layouts there:
# the fp32 lanes of one vector register. Checked in that order ("AVX512" before "AVX2").
CHANNEL_BLOCKS = (("AVX512", 16), ("SVE512", 16), ("AVX2", 8), ("SVE256", 8))
# The values that cap oneDNN's instruction set (`devices.cpu.ONEDNN_ISA_VARIABLES`; x86) -> its channel block
# there (its SSE4.1 and AVX kernels block by 8 as AVX2's do).
ONEDNN_ISA_BLOCKS = {**dict.fromkeys(("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"), 8),
                     **dict.fromkeys(("AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16",
                                      "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
                                      "AVX10_1_512_AMX_FP16"), 16)}


def channel_block_of(capability: str) -> int:
    """The channel block for a CPU capability string as torch names it; 1 (channels as counted) for one not
    known to block, such as DEFAULT or NO AVX."""
    name = capability.upper()
    return next((block for prefix, block in CHANNEL_BLOCKS if name.startswith(prefix)), 1)


def device_channel_block(device_type: str) -> tuple[int, str]:
    """The channel block of the device's convolution kernels and where it came from (shown by `calibrate`).

    CPU: oneDNN's layouts follow the widest vector set the CPU has (`torch.cpu._is_avx512_supported`, probed),
    which `ATEN_CPU_CAPABILITY` does not lower, unless `ONEDNN_MAX_CPU_ISA` caps it; without the probe, torch's
    CPU capability (`torch.backends.cpu.get_cpu_capability`) stands for the CPU's; a torch with neither gives 1.
    Other devices: 1, as no blocking was measured there. Why oneDNN's and not ATen's: `benchmarks/NOTES.md`.
    """
    if device_type != "cpu":
        return 1, f"{device_type}: channels as counted"
    from cmt_gen.devices.cpu import cpu_capability

    capability = cpu_capability()
    widest = "AVX512" if _probed("cpu._is_avx512_supported") else "AVX2" if _probed("cpu._is_avx2_supported") else ""
    if not (capability or widest):
        return 1, "cpu capability unknown to this torch: channels as counted"
    block = channel_block_of(widest or capability)
    source = f"cpu capability {capability}" if capability else f"cpu {widest}"
    capped, cap = _onednn_cap(block)
    if cap:
        return capped, f"{source}; {cap}"
    if capability and channel_block_of(capability) != block:
        source += f"; oneDNN runs the CPU's {widest}"
    return block, source


def _onednn_cap(block: int) -> tuple[int, str]:
    """The block under a cap on oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA=AVX2`), and what was done with
    the cap ("" for none, or one that does not lower the block)."""
    caps = instruction_set_caps()  # oneDNN reads the first of its variables that is set
    variable, limit = next(((v, caps[v]) for v in ONEDNN_ISA_VARIABLES if v in caps), ("", ""))
    if not limit or limit.upper() == "ALL":
        return block, ""
    capped = ONEDNN_ISA_BLOCKS.get(limit.upper())
    if capped is None:
        return block, f"{variable}={limit} is not an instruction set known here, so not applied"
    if capped < block:
        return capped, f"oneDNN limited to {limit} by {variable}"
    return block, ""


def _probed(path: str):
    """`torch.<path>()`, or None where this torch has no such function or it fails (a private probe)."""
    import torch

    target = torch
    for name in path.split("."):
        target = getattr(target, name, None)
    try:
        return target() if callable(target) else None
    except Exception:  # noqa: BLE001 - a probe that fails on some build is the same as no probe
        return None
