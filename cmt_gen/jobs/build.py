"""What `cmt-gen build` does beyond the table: build, load weights, prove a forward pass, save."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cmt_gen.errors import CmtGenError
from cmt_gen.spec.schema import CMTSpec

SAVE_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass
class BuildResult:
    params: int
    output_shape: tuple[int, ...]
    forward_seconds: float
    weights_loaded: str | None
    saved_to: str | None
    weights_note: str | None = None  # position biases resampled from the checkpoint's resolution


def check_output_path(output: str | Path | None, inputs: Iterable[str | Path | None] = ()) -> Path | None:
    """Fail before any work if the output cannot be written, or would replace one of the `inputs`."""
    from cmt_gen.files import check_output_target

    if output is None:
        return None
    path = Path(output)
    check_output_target(path, inputs=inputs, suffixes=SAVE_SUFFIXES, what="weights")
    return path


def save_weights(model, path: Path) -> None:
    """Atomically write a state dict as .pt or .safetensors."""
    import torch

    from cmt_gen.files import atomic_output

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise CmtGenError("saving .safetensors needs the extra: pip install 'cmt-gen[safetensors]'",
                              source=str(path)) from None
    else:
        save_file = torch.save
    with atomic_output(path) as tmp:
        save_file(state, str(tmp))


def check_build_fits(spec: CMTSpec, batch: int = 2, force: bool | None = False) -> None:
    """Refuse, from the analytic count alone, a build whose forward pass would not fit in memory.

    `force` None: the command has no --force to offer (export), so the message does not offer it."""
    from cmt_gen.cost.memory_guard import check_fits

    alternative = "lower the resolution or the widths" + (", or pass --force" if force is not None else "")
    check_fits(spec, spec.resolution, spec.resolution, batch, action="building and running it", mode="infer",
               alternative=alternative, field="build", force=bool(force))


def run_build(spec: CMTSpec, weights: str | Path | None = None, output: str | Path | None = None,
              batch: int = 2, force: bool = False) -> BuildResult:
    """Build, load, run one forward pass on a dummy batch, save; refuses what would not fit in memory."""
    check_build_fits(spec, batch, force)
    import torch

    from cmt_gen.model.convert import load_checkpoint
    from cmt_gen.model.network import build_model, count_parameters

    out_path = check_output_path(output)
    model = build_model(spec)
    note = load_checkpoint(model, weights) if weights is not None else None
    model.eval()
    x = torch.randn(batch, spec.in_channels, spec.resolution, spec.resolution)
    start = time.perf_counter()
    with torch.inference_mode():
        y = model(x)
    seconds = time.perf_counter() - start
    if not torch.isfinite(y).all():
        raise CmtGenError("the forward pass produced non-finite values", source=spec.name)
    if out_path is not None:
        save_weights(model, out_path)
    return BuildResult(count_parameters(model), tuple(y.shape), seconds,
                       str(weights) if weights else None, str(out_path) if out_path else None, note)
