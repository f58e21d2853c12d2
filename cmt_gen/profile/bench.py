"""A model made ready to time: placed on the device in the run's precision and layout, with its input.

`Bench.step` is one timed call: a forward pass under `inference_mode` (and
autocast for AMP), or a whole training step (forward, loss, backward, AdamW
step; a GradScaler for fp16 AMP on CUDA). Also the run-wide switches: torch's
thread count and the device's flags (cuDNN's algorithm search), each restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cmt_gen.devices import device_for
from cmt_gen.profile.backends import applies_deploy_form, make_runner, prepare_model
from cmt_gen.profile.settings import ProfileSettings
from cmt_gen.profile.targets import ModelTarget
from cmt_gen.profile.timing import Clock


class Bench:
    """A model placed for the settings (device, dtype, memory format, mode) with its input and step."""

    def __init__(self, model, target: ModelTarget, settings: ProfileSettings):
        import torch

        self.settings = settings
        self.target = target
        self.device = torch.device(settings.device)
        self.compute_dtype = getattr(torch, settings.compute_dtype)
        self.amp = settings.precision == "amp"
        self.param_dtype = torch.float32 if self.amp else self.compute_dtype
        memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.deployed = applies_deploy_form(model, settings)
        model = prepare_model(model, target, settings)
        first = next(model.parameters(), None)
        self.restore = (first.device, first.dtype, model.training) if target.resident and first is not None else None
        model = model.to(device=self.device, dtype=self.param_dtype, memory_format=memory_format)
        self.train = settings.mode == "train"
        model.train(self.train)
        self.model = model
        self.runner = model
        self.prepare_seconds: float | None = None  # onnxruntime: export and session, reported apart
        if settings.compile or settings.backend == "onnxruntime":
            # batch 2, not 1: an exporter would take a size-1 batch for a constant
            example = torch.zeros(2, target.in_channels, target.resolution, target.resolution)
            self.runner, self.prepare_seconds = make_runner(model, target, settings, example)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if self.train else None
        self.scaler = None
        if self.train and self.amp and device_for(settings.device_type).uses_grad_scaler(settings.compute_dtype):
            self.scaler = torch.amp.GradScaler(settings.device_type)
        self.classes = int(getattr(model, "num_classes", 0) or 0)
        self.x = None
        self.labels = None

    def set_batch(self, batch: int) -> None:
        import torch

        self.x = self.labels = None
        x = torch.randn(batch, self.target.in_channels, self.target.resolution, self.target.resolution,
                        device=self.device, dtype=self.param_dtype)
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x
        if self.train and self.classes > 0:
            self.labels = torch.randint(0, self.classes, (batch,), device=self.device)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """inference_mode and autocast around a whole timed loop (train steps enter autocast themselves)."""
        import torch

        with contextlib.ExitStack() as stack:
            if not self.train:
                stack.enter_context(torch.inference_mode())
                if self.amp:
                    stack.enter_context(torch.autocast(self.settings.device_type, dtype=self.compute_dtype))
            yield

    def step(self):
        if not self.train:
            return self.runner(self.x)
        return self._train_step()

    def _train_step(self):
        import torch
        import torch.nn.functional as F

        self.optimizer.zero_grad(set_to_none=True)
        autocast = (torch.autocast(self.settings.device_type, dtype=self.compute_dtype) if self.amp
                    else contextlib.nullcontext())
        with autocast:
            out = self.runner(self.x)
            if isinstance(out, (list, tuple)):
                out = out[-1]
            out = out.float()
            loss = F.cross_entropy(out, self.labels) if self.labels is not None else out.pow(2).mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss

    def first_call(self, clock: Clock) -> float:
        """Seconds of the first call at this input shape: compilation plus one run."""
        with self.context():
            return clock.time(self.step, 1)

    def close(self) -> None:
        self.x = self.labels = self.optimizer = self.scaler = None
        if self.settings.compile:
            import torch

            torch._dynamo.reset()
        if self.restore is not None and self.model is not None and not self.train:
            device, dtype, training = self.restore
            self.model.to(device=device, dtype=dtype).train(training)
        self.runner = self.model = None


def device_flags(settings: ProfileSettings) -> contextlib.AbstractContextManager:
    """The device's run-wide switches (on CUDA, cuDNN picks its fastest algorithms, as timm, DeiT and Swin
    benchmarks do); restored after."""
    return device_for(settings.device_type).run_flags()


@contextlib.contextmanager
def thread_count(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the run and restore them after."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def run_environment(settings: ProfileSettings) -> Iterator[None]:
    """Threads, device flags and the host allocator policy of a run, all restored after; and, before the
    process's first oneDNN kernel, room in oneDNN's cache for the many networks of a run (onednn_cache)."""
    from cmt_gen.profile.host_allocator import allocator_policy
    from cmt_gen.profile.onednn_cache import enlarge_primitive_cache

    enlarge_primitive_cache()

    with thread_count(settings.threads), device_flags(settings), allocator_policy(settings.allocator):
        yield
