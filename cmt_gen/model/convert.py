"""Released CMT checkpoints: key conversion and strict, safe loading.

The authors' `cmt.py` names its four stages `blocks_a..d`, `patch_embed_a..d`
and `relative_pos_a..d`; ours are `stages.{i}.*`. The mapping is a table of
regular expressions, so one reads it as the layout diff it is.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from cmt_gen.errors import CheckpointError
from cmt_gen.model.bias_resize import resize_position_biases

# One table for both directions: (released name, ours). A `{field}` is one part of a name: `stage` is a
# letter a-d there and an index 0-3 here, `unit` a stem layer 1-3 there and 0-2 here; the rest are copied.
_RULES: list[tuple[str, str]] = [
    ("relative_pos_{stage}", "stages.{stage}.position_bias"),
    ("stem_conv{unit}.{param}", "stem.{unit}.conv.{param}"),
    ("stem_norm{unit}.{rest}", "stem.{unit}.norm.{rest}"),
    ("patch_embed_{stage}.proj.{rest}", "stages.{stage}.downsample.conv.{rest}"),
    ("patch_embed_{stage}.norm.{rest}", "stages.{stage}.downsample.norm.{rest}"),
    ("blocks_{stage}.{block}.proj.{rest}", "stages.{stage}.blocks.{block}.lpu.conv.{rest}"),
    ("blocks_{stage}.{block}.{norm}.{rest}", "stages.{stage}.blocks.{block}.{norm}.{rest}"),
    ("blocks_{stage}.{block}.attn.{linear}.{rest}", "stages.{stage}.blocks.{block}.attn.{linear}.{rest}"),
    ("blocks_{stage}.{block}.attn.sr.0.{rest}", "stages.{stage}.blocks.{block}.attn.reduce.conv.{rest}"),
    ("blocks_{stage}.{block}.attn.sr.1.{rest}", "stages.{stage}.blocks.{block}.attn.reduce.norm.{rest}"),
    ("blocks_{stage}.{block}.mlp.conv1.0.{rest}", "stages.{stage}.blocks.{block}.ffn.expand.conv.{rest}"),
    ("blocks_{stage}.{block}.mlp.conv1.2.{rest}", "stages.{stage}.blocks.{block}.ffn.expand.norm.{rest}"),
    ("blocks_{stage}.{block}.mlp.proj.{rest}", "stages.{stage}.blocks.{block}.ffn.local.conv.{rest}"),
    ("blocks_{stage}.{block}.mlp.proj_bn.{rest}", "stages.{stage}.blocks.{block}.ffn.local.norm.{rest}"),
    ("blocks_{stage}.{block}.mlp.conv2.0.{rest}", "stages.{stage}.blocks.{block}.ffn.project.conv.{rest}"),
    ("blocks_{stage}.{block}.mlp.conv2.1.{rest}", "stages.{stage}.blocks.{block}.ffn.project.norm.{rest}"),
    ("_fc.{rest}", "head.conv.{rest}"),
    ("_bn.{rest}", "head.norm.{rest}"),
    ("head.{param}", "head.fc.{param}"),
]
# field -> (pattern in the released name, pattern in ours, released value -> ours, ours -> released)
_FIELDS: dict[str, tuple[str, str, Callable[[str], str], Callable[[str], str]]] = {
    "stage": ("[a-d]", "[0-3]", lambda v: str("abcd".index(v)), lambda v: "abcd"[int(v)]),
    "unit": ("[1-3]", "[0-2]", lambda v: str(int(v) - 1), lambda v: str(int(v) + 1)),
    "block": (r"\d+", r"\d+", str, str),
    "norm": ("norm1|norm2", "norm1|norm2", str, str),
    "linear": ("q|k|v|proj", "q|k|v|proj", str, str),
    "param": ("weight|bias", "weight|bias", str, str),
    "rest": (".+", ".+", str, str),
}


def _compile(template: str, side: int) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("^" + "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELDS[part][side]})"
                                    for i, part in enumerate(parts)) + "$")


_TO_OURS = [(_compile(theirs, 0), ours) for theirs, ours in _RULES]
_TO_RELEASED = [(_compile(ours, 1), theirs) for theirs, ours in _RULES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]], side: int) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**{k: _FIELDS[k][2 + side](v) for k, v in match.groupdict().items()})
    return None


def convert_official_key(key: str) -> str:
    """Our name for one key of a released checkpoint; raises CheckpointError if unknown."""
    ours = _rename(key, _TO_OURS, 0)
    if ours is None:
        raise CheckpointError(f"key {key!r} is not part of the released CMT layout")
    return ours


def released_key(key: str) -> str | None:
    """The released layout's name for one of our keys; None where that layout has no place for it
    (a position bias per block, an avgpool or conv_ln reduction, a fifth stage...)."""
    return _rename(key, _TO_RELEASED, 1)


def is_official_layout(state_dict: Mapping[str, object]) -> bool:
    return any(isinstance(k, str) and k.startswith(("blocks_a.", "patch_embed_a.", "stem_conv1.")) for k in state_dict)


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a released checkpoint's keys (`blocks_a.0.attn.sr.0.weight`, ...) to ours."""
    unknown = []
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        try:
            converted[convert_official_key(key)] = value
        except CheckpointError:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys are not part of the released CMT layout: {_preview(unknown)}"
        )
    return converted


def released_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys under the authors' names (`stages.0.blocks.0.attn.reduce.conv.weight` ->
    `blocks_a.0.attn.sr.0.weight`), for code that loads the released layout; refuses a network the
    released layout cannot describe."""
    renamed, homeless = {}, []
    for key, value in state_dict.items():
        theirs = released_key(key)
        if theirs is None:
            homeless.append(key)
        else:
            renamed[theirs] = value
    if homeless:
        raise CheckpointError(f"{len(homeless)} keys have no place in the released CMT layout (it holds the "
                              f"released block options and four stages): {_preview(homeless)}")
    return renamed


def _preview(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def unwrap_checkpoint(obj: object) -> Mapping[str, torch.Tensor]:
    """Released and training checkpoints nest the weights under 'model' or 'state_dict'."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_ema"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError("the file holds no state dict (a mapping of names to tensors)")


def read_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Read a `.pt`/`.pth` (weights only: a pickle that runs code is refused) or `.safetensors`."""
    path = Path(path)
    _check_checkpoint_file(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError("reading .safetensors needs the extra: pip install 'cmt-gen[safetensors]'",
                                  source=str(path)) from None
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"not a readable safetensors file ({exc})", source=str(path)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols even on files it refuses
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(_load_failure(exc), source=str(path)) from None
    try:
        return unwrap_checkpoint(obj)
    except CheckpointError as exc:
        raise CheckpointError(exc.rule, source=str(path)) from None


def _check_checkpoint_file(path: Path) -> None:
    """A regular file that fits in memory: torch would read a FIFO or /dev/zero forever."""
    import os
    import stat

    from cmt_gen.cost.memory_guard import available_memory

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError("no such file", source=str(path)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise CheckpointError(f"is {kind}; a checkpoint is a .pt, .pth or .safetensors file", source=str(path))
    free = available_memory()
    if info.st_size > free:
        raise CheckpointError(f"is {info.st_size / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory "
                              "available to read it", source=str(path))


def check_tensors(state_dict: Mapping[object, object], own: Mapping[str, torch.Tensor],
                  source: str | None) -> None:
    """Names are strings, values tensors, and each weight of the model gets a finite floating-point tensor.

    A checkpoint of integers, booleans or complex numbers would load "successfully" through
    torch's silent casts; it is never the model's weights. NaN or infinity in a weight would
    only show up later as a non-finite output, far from its cause.
    """
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"a state dict maps parameter names to tensors, found the {type(key).__name__} "
                                  f"key {key!r}", source=source)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"holds a {type(value).__name__}, not a tensor", source=source, field=key)
    for key, expected in own.items():
        value = state_dict.get(key)
        if not isinstance(value, torch.Tensor):
            continue  # a missing key is reported with the others
        if expected.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"dtype {str(value.dtype).removeprefix('torch.')}; a weight of the model is a "
                                  "floating-point tensor", source=source, field=key)
        if not expected.is_floating_point() and (value.is_floating_point() or value.is_complex()
                                                 or value.dtype == torch.bool):
            raise CheckpointError(f"dtype {str(value.dtype).removeprefix('torch.')}; this buffer holds whole numbers "
                                  f"({str(expected.dtype).removeprefix('torch.')})", source=source, field=key)
        if value.is_floating_point() and value.device.type != "meta":
            bad = _count_non_finite(value)
            if bad:
                raise CheckpointError(f"holds {bad} NaN or infinite value{'s' if bad > 1 else ''}; a weight of the "
                                      "model is finite", source=source, field=key)


def _count_non_finite(value: torch.Tensor) -> int:
    try:
        finite = torch.isfinite(value)
    except (RuntimeError, NotImplementedError):  # some float8 kinds have no isfinite kernel
        finite = torch.isfinite(value.to(torch.float32))
    return int(value.numel() - finite.sum())


# The line of torch's refusal that says what the pickle asked for (a global, an opcode).
_REFUSAL = re.compile(r"(Unsupported [^\n]*?|Trying to load unsupported GLOBAL [^\n]*?)(?:\.(?=\s|$)|\n|$)")


def _load_failure(exc: Exception) -> str:
    """torch's reason in one line, without its advice to retry with weights_only=False."""
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        found = _REFUSAL.search(text)
        detail = found.group(1).strip() if found else "it holds more than tensors"
        return f"refused: not a weights-only checkpoint ({detail[:200]}); nothing in it was run"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"unreadable as a checkpoint ({first[:200]})"


def our_layout(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
               source: str | None = None) -> Mapping[str, torch.Tensor]:
    """The checkpoint under our names (the released layout converted), its tensors checked before and after.

    Every loader calls this before it adapts or loads anything (`load_state_dict_strict`, timm's
    `pretrained=True`), so a file is refused the same way, with the same message, on every path.
    """
    check_tensors(state_dict, own, source)
    if is_official_layout(state_dict):
        try:
            state_dict = convert_official_state_dict(state_dict)
        except CheckpointError as exc:
            raise CheckpointError(exc.rule, source=source) from None
        check_tensors(state_dict, own, source)  # dtypes, now under our names
    return state_dict


def check_fit(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
              source: str | None = None) -> None:
    """Every key of the model, no other, each of its shape; one line lists all missing, unexpected, mis-shaped."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = []
        if missing:
            lines.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            lines.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        if shapes:
            lines.append(f"wrong shape {len(shapes)}: {_preview(shapes, 4)}")
        raise CheckpointError("checkpoint does not fit the spec's model; " + "; ".join(lines), source=source)


class CheckedStateDict(dict):
    """A state dict already under our names with its tensors checked and its fit to the model checked:
    a model that checks in its own `load_state_dict` (timm's `TimmCMT`) need not read every tensor again."""


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: str | None = None) -> str | None:
    """Load all keys or none; a mismatch lists missing, unexpected and mis-shaped keys at once.

    Position biases trained at another resolution are resampled to the model's; the returned line
    says so (None when nothing was resampled)."""
    own = model.state_dict()
    state_dict, note = resize_position_biases(our_layout(state_dict, own, source), own)
    check_fit(state_dict, own, source)
    model.load_state_dict(CheckedStateDict(state_dict), strict=True)
    return note


def load_checkpoint(model: nn.Module, path: str | Path) -> str | None:
    """Read a checkpoint (ours or the released layout) and load it strictly into `model`; returns the
    line saying which position biases were resampled to the model's resolution, or None."""
    return load_state_dict_strict(model, read_checkpoint(path), source=str(path))
