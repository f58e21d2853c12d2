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


LAYOUTS = ("cmt-gen", "released")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise CmtGenError(f"unknown layout {layout!r}; use {' or '.join(LAYOUTS)}", field="--layout")
    return layout


def save_weights(model, path: Path, layout: str = "cmt-gen") -> None:
    """Atomically write a state dict as .pt or .safetensors, under our names or the authors' (`released`:
    the keys of their `cmt.py`, nested under "model" in a .pt as their checkpoints are)."""
    import torch

    from cmt_gen.files import atomic_output
    from cmt_gen.model.convert import released_state_dict

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if check_layout(layout) == "released":
        state = released_state_dict(state)
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise CmtGenError("saving .safetensors needs the extra: pip install 'cmt-gen[safetensors]'",
                              source=str(path)) from None
    else:
        save_file = torch.save
    payload = {"model": state} if layout == "released" and save_file is torch.save else state
    with atomic_output(path) as tmp:
        save_file(payload, str(tmp))


def check_build_fits(spec: CMTSpec, batch: int = 2, force: bool | None = False) -> None:
    """Refuse, from the analytic count alone, a build whose forward pass would not fit in memory.

    `force` None: the command has no --force to offer (export), so the message does not offer it."""
    from cmt_gen.cost.memory_guard import check_fits

    alternative = "lower the resolution or the widths" + (", or pass --force" if force is not None else "")
    check_fits(spec, spec.resolution, spec.resolution, batch, action="building and running it", mode="infer",
               alternative=alternative, field="build", force=bool(force))


def run_build(spec: CMTSpec, weights: str | Path | None = None, output: str | Path | None = None,
              batch: int = 2, force: bool = False, layout: str = "cmt-gen") -> BuildResult:
    """Build, load, run one forward pass on a dummy batch, save (in `layout`); refuses what would not fit in
    memory. With `weights` in either layout and `layout="released"`, this converts a checkpoint both ways."""
    check_layout(layout)
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
        save_weights(model, out_path, layout)
    return BuildResult(count_parameters(model), tuple(y.shape), seconds,
                       str(weights) if weights else None, str(out_path) if out_path else None, note)
