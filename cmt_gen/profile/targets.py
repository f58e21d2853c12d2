"""What gets profiled: a spec, a built module or a peer, turned into one uniform `ModelTarget`.

A target knows how to build its model (inside the memory measurement, so the
weights count), its input size, its MACs per image and a hash that identifies
exactly which network was measured.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cmt_gen.errors import CmtGenError


@dataclass
class ModelTarget:
    name: str
    kind: str  # "cmt", "timm" or "module"
    resolution: int
    in_channels: int
    build: Callable[[], Any]  # returns an nn.Module (on CPU, fp32)
    content_hash: str
    macs: int | None = None  # forward multiply-accumulates per image
    macs_source: str | None = None
    count_macs: Callable[[], int] | None = None  # measured lazily, once, outside the memory window
    params: int | None = None
    paper_throughput: float | None = None
    source: str | None = None  # what the user wrote: "cmt_s", "timm:swin_tiny_patch4_window7_224"
    resident: bool = False  # build() hands back a module whose weights already exist

    def resolve_macs(self) -> int | None:
        if self.macs is None and self.count_macs is not None:
            self.macs = int(self.count_macs())
        return self.macs


def canonical_hash(payload: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces): equal content gives an equal hash."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_hash(spec) -> str:
    """Hash of a resolved spec's content (`spec_to_dict`), independent of where it came from."""
    from cmt_gen.spec.serialize import spec_to_dict

    return canonical_hash(spec_to_dict(spec))


def paper_throughput_of(spec) -> float | None:
    """The paper's images/s for a spec that still is the paper's network at its paper resolution."""
    ref = spec.reference
    if ref is None or ref.throughput is None:
        return None
    if ref.resolution is not None and ref.resolution != spec.resolution:
        return None
    return float(ref.throughput)


def target_from_spec(spec, source: str | None = None) -> ModelTarget:
    """A CMT spec: built by `build_model`, MACs from the analytic count at its resolution."""
    from cmt_gen.cost.analytic import analytic_cost

    cost = analytic_cost(spec)

    def build():
        from cmt_gen.model.network import build_model

        return build_model(spec)

    return ModelTarget(
        name=spec.name, kind="cmt", resolution=spec.resolution, in_channels=spec.in_channels, build=build,
        content_hash=spec_hash(spec), macs=cost.macs, macs_source="analytic", params=cost.params,
        paper_throughput=paper_throughput_of(spec), source=source or spec.name,
    )


def target_from_module(module, *, resolution: int | None = None, name: str | None = None,
                       in_channels: int | None = None) -> ModelTarget:
    """An already built module (ours or anyone's); its MACs are counted with torch's FlopCounterMode."""
    spec = getattr(module, "spec", None)
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    input_size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if resolution is None:
        if spec is not None and hasattr(spec, "resolution"):
            resolution = spec.resolution
        elif input_size:
            resolution = int(input_size[-1])
        else:
            raise CmtGenError("cannot tell this module's input size; pass resolution=", field="resolution")
    if in_channels is None:
        in_channels = getattr(spec, "in_channels", None) or (int(input_size[0]) if input_size else 3)
    label = name or getattr(spec, "name", None) or type(module).__name__
    macs = macs_source = None
    if spec is not None and getattr(spec, "resolution", None) == resolution and hasattr(spec, "stages"):
        from cmt_gen.cost.analytic import analytic_cost

        macs, macs_source = analytic_cost(spec).macs, "analytic"
    hashed = spec_hash(spec) if spec is not None and hasattr(spec, "stages") else canonical_hash(
        {"module": type(module).__qualname__, "repr": repr(module), "resolution": resolution})
    return ModelTarget(
        name=label, kind="cmt" if macs_source == "analytic" else "module", resolution=resolution,
        in_channels=in_channels, build=lambda: module, content_hash=hashed, macs=macs,
        macs_source=macs_source or "FlopCounterMode/2",
        count_macs=None if macs is not None else (lambda: count_macs(module, resolution, in_channels)),
        params=sum(p.numel() for p in module.parameters()), resident=True,
        paper_throughput=paper_throughput_of(spec) if spec is not None and hasattr(spec, "reference") else None,
    )


def math_attention_only():
    """A context in which scaled_dot_product_attention takes its math path (matmuls a counter sees)."""
    import torch

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    return sdpa_kernel([SDPBackend.MATH])


def count_macs(module, resolution: int, in_channels: int = 3) -> int:
    """Forward MACs of one image: torch's FlopCounterMode total / 2 (it counts a multiply-add as 2).

    It counts convolutions, matmuls and fused attention, the same operations as
    the analytic count of CMT; norms and elementwise ops are not counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    module.eval()
    try:
        x = torch.zeros(1, in_channels, resolution, resolution, device=device, dtype=dtype)
        counter = FlopCounterMode(display=False)
        # Fused CPU attention kernels are invisible to the counter; the math path is counted as matmuls.
        with torch.no_grad(), math_attention_only(), counter:
            module(x)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2
