"""timm integration: `import cmt_gen.timm` puts the bundled CMTs in timm's model registry.

After the import, `timm.create_model("cmt_s", pretrained=..., num_classes=...,
in_chans=..., drop_rate=..., drop_path_rate=..., global_pool=...,
features_only=..., out_indices=...)` behaves as for timm's own models:
timm's builder resolves the pretrained cfg, loads weights (released
checkpoints are converted by `checkpoint_filter_fn`) and wraps feature
models. `register_spec` adds a user's spec the same way. timm is an optional
extra (`pip install 'cmt-gen[timm]'`); `import cmt_gen` never imports it.

Weights reach a CMT through timm by `pretrained=True` (a file, URL, hub id or
state dict in the pretrained cfg), `checkpoint_path=` and
`timm.models.load_checkpoint`; each path refuses what `cmt-gen build --weights`
refuses (non-float or non-finite weights, missing, unexpected or mis-shaped
keys), by the same functions of `cmt_gen.model.convert`, with the same message.

Only timm's public registry API is used (`register_model`, `is_model`,
`model_entrypoint`), so every timm from the floor on works. Registering a CMT
name again (`overwrite=True`) replaces its entrypoint and cfg; older timm
releases (1.0.3 among them) keep listing the previous registration's tagged
names, since only timm's private tables could remove them.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cmt_gen.errors import CheckpointError, CmtGenError

try:  # timm's public registry and builder API only: its private tables differ between releases
    from timm.models import (
        build_model_with_cfg,
        generate_default_cfgs,
        is_model,
        model_entrypoint,
        register_model,
        resolve_pretrained_cfg,
    )
except ImportError as exc:
    if importlib.util.find_spec("timm") is None:
        raise CmtGenError("cmt_gen.timm needs timm: pip install 'cmt-gen[timm]'", source="cmt_gen.timm") from exc
    raise CmtGenError(f"timm is installed but cmt_gen.timm cannot use it ({exc}); it needs timm >= 1.0.3 "
                      "with a torchvision built for this torch", source="cmt_gen.timm") from exc

from cmt_gen.model.bias_resize import resize_position_biases
from cmt_gen.model.convert import CheckedStateDict, check_fit, our_layout, read_checkpoint, unwrap_checkpoint
from cmt_gen.model.network import CMT
from cmt_gen.model.pretrained_cfg import pretrained_cfg_for
from cmt_gen.spec.loading import load_spec
from cmt_gen.spec.schema import CMTSpec
from cmt_gen.spec.serialize import spec_to_dict

BUNDLED = ("cmt_ti", "cmt_xs", "cmt_s", "cmt_b", "cmt_l")
TAG = "in1k"  # the released weights: ImageNet-1k, trained by the authors
# timm's register_model reads the registering module's `default_cfgs`.
default_cfgs: dict[str, Any] = {}
_SPECS: dict[str, CMTSpec] = {}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class TimmCMT(CMT):
    """The CMT timm builds: timm's `checkpoint_path=` and `load_checkpoint` hand a file's tensors straight to
    `load_state_dict`, so it applies the checks of `cmt-gen build --weights` first (all keys when strict)."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if not isinstance(state_dict, CheckedStateDict):  # checked already: `pretrained=True`, load_checkpoint
            own = self.state_dict()
            state_dict = _resized(our_layout(state_dict, own), own)
            if strict:
                check_fit(state_dict, own)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _weights_source(model: torch.nn.Module) -> str:
    """Where timm's builder read the weights from, to name in an error as the CLI names its file."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("state_dict") is not None:
        return "pretrained_cfg state_dict"
    return next((str(cfg[key]) for key in ("file", "hf_hub_id", "url") if cfg.get(key)), "pretrained weights")


def _cfg_keys(cfg: Mapping[str, Any], field: str, suffixes: tuple[str, ...]) -> list[str]:
    modules = cfg.get(field) or ()
    return [f"{m}.{s}" for m in ((modules,) if isinstance(modules, str) else modules) for s in suffixes]


def _but_channels(weight: torch.Tensor) -> tuple[int, ...]:
    return (weight.shape[0], *weight.shape[2:])


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's `pretrained_filter_fn`: the checks of `cmt-gen build --weights`, before timm adapts anything.

    Unwraps `model` / `model_ema` / `state_dict` and converts the released keys. Runs here since
    timm's own adapting casts an int8 stem to float and loads non-strictly once it drops the head.
    What timm adapts passes: a classifier of another class count (dropped when `num_classes`
    differs from the cfg's) and a stem for the cfg's input channels (folded to `in_chans`).
    """
    source = _weights_source(model)
    try:
        state_dict = unwrap_checkpoint(state_dict)
    except CheckpointError as exc:
        raise CheckpointError(exc.rule, source=source) from None
    state_dict = {k.removeprefix("module.") if isinstance(k, str) else k: v for k, v in state_dict.items()}
    own = dict(model.state_dict())
    state_dict = dict(our_layout(state_dict, own, source))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("num_classes") is not None and getattr(model, "num_classes", None) != cfg["num_classes"]:
        for key in _cfg_keys(cfg, "classifier", ("weight", "bias")):  # timm drops them
            own.pop(key, None)
            state_dict.pop(key, None)
    source_chans = (cfg.get("input_size") or (3,))[0]
    for key in _cfg_keys(cfg, "first_conv", ("weight",)):
        mine, theirs = own.get(key), state_dict.get(key)
        if mine is not None and theirs is not None and theirs.ndim == mine.ndim == 4 \
                and theirs.shape[1] == source_chans and _but_channels(theirs) == _but_channels(mine):
            own[key] = theirs  # timm folds or repeats these input channels into `in_chans`
    state_dict = _resized(state_dict, own)
    check_fit(state_dict, own, source)
    return CheckedStateDict(state_dict)  # timm adapts it in place, then loads it: no second full check


def _resized(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Position biases trained at another resolution, resampled to the model's (`img_size`), with a warning
    that says so (timm resamples a ViT's position embeddings on load the same way)."""
    state_dict, note = resize_position_biases(state_dict, own)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)
    return state_dict


def cmt_from_kwargs(spec: CMTSpec, num_classes: int | None = None, in_chans: int | None = None,
                    drop_rate: float | None = None, drop_path_rate: float | None = None,
                    global_pool: str = "avg", img_size: int | tuple[int, int] | None = None) -> TimmCMT:
    """The `model_cls` timm's builder calls: timm's keyword arguments become spec overrides.

    `img_size` (timm's name for the input resolution; square, an int or an equal pair) sets the spec's
    resolution: the stages' grids and position biases follow, and released weights load into it with
    their biases resampled."""
    overrides = {key: value for key, value in (
        ("num_classes", num_classes), ("in_channels", in_chans),
        ("head.dropout", drop_rate), ("drop_path", drop_path_rate), ("resolution", _side(img_size)),
    ) if value is not None}
    if overrides:
        spec = load_spec(spec_to_dict(spec), overrides)
    return TimmCMT(spec, global_pool=global_pool)


def _side(img_size: int | tuple[int, int] | list[int] | None) -> int | None:
    if img_size is None or isinstance(img_size, int):
        return img_size
    sides = tuple(img_size)
    if len(sides) != 2 or sides[0] != sides[1]:
        raise CmtGenError(f"img_size={img_size!r}: a CMT spec has one square resolution; pass an int or (n, n)",
                          field="resolution")
    return sides[0]


def _check_weights_file(name: str, kwargs: Mapping[str, Any]) -> None:
    """Read a `file=` checkpoint as `cmt-gen build --weights` does before timm reads it: timm 1.0.3 unpickles
    it fully (on torch < 2.6 code in it runs), and a FIFO, folder or oversized file deserves the CLI's message."""
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = resolve_pretrained_cfg(name, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=overlay)
    if cfg.file and cfg.state_dict is None and cfg.source not in ("hf-hub", "local-dir") and not cfg.custom_load:
        read_checkpoint(cfg.file)  # a weights-only read: the tensors are checked again by checkpoint_filter_fn


def create_cmt(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Build a registered CMT through timm's builder (pretrained cfg, weights, feature wrappers)."""
    spec = _SPECS[name]
    if pretrained:
        _check_weights_file(name, kwargs)
    model = build_model_with_cfg(
        cmt_from_kwargs, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(len(spec.stages))), flatten_sequential=True),
        spec=spec, **kwargs,
    )
    side = _side(kwargs.get("img_size"))
    if side is not None and isinstance(getattr(model, "pretrained_cfg", None), Mapping):
        # timm's data config reads input_size from here: the size the model was built for, not the release's
        cfg = dict(model.pretrained_cfg)
        cfg["input_size"] = (tuple(cfg.get("input_size") or (3,))[0], side, side)
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def _timm_cfg(spec: CMTSpec) -> dict[str, Any]:
    cfg = pretrained_cfg_for(spec)
    cfg.pop("architecture")  # timm fills it from the registered name
    return cfg


def _entrypoint(name: str) -> Callable[..., torch.nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        return create_cmt(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"CMT from the spec {name!r} (cmt-gen)."
    return entrypoint


def register_spec(spec_or_path: CMTSpec | str | Path | Mapping, name: str | None = None, *,
                  overwrite: bool = False) -> str:
    """Register a spec (a CMTSpec, a bundled name, a YAML path or a dict) as a timm model; returns its name.

    A name timm already has is never replaced silently. A CMT's (bundled, or registered before) is
    replaced only with `overwrite=True`: a spec that `extends: cmt_s` keeps the name `cmt_s`, and
    would otherwise swap the released CMT-S, and its pretrained URL, for itself in every caller's timm.
    Another family's model (`resnet50`) is refused even then, since other code builds it by that name.
    """
    spec = spec_or_path if isinstance(spec_or_path, CMTSpec) else load_spec(spec_or_path)
    name = spec.name if name is None else name
    source = str(spec_or_path) if isinstance(spec_or_path, (str, Path)) else spec.name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CmtGenError(f"{name!r} is not a usable timm model name (letters, digits, underscores)",
                          source=source, field="name")
    if is_model(name):
        if getattr(model_entrypoint(name), "__module__", None) != __name__:
            raise CmtGenError(f"timm already has a model named {name!r}; pass another name=", source=source,
                              field="name")
        if not overwrite:
            kind = "a bundled CMT" if name in BUNDLED else "a CMT registered before"
            raise CmtGenError(f"timm already has {name!r}, {kind}; pass overwrite=True to replace it, or give "
                              "the spec its own name", source=source, field="name")
    spec = spec.model_copy(update={"name": name})
    cfg = _timm_cfg(spec)
    key = f"{name}.{TAG}" if cfg["url"] else name
    default_cfgs.pop(name, None)
    default_cfgs.update(generate_default_cfgs({key: cfg}))
    _SPECS[name] = spec
    exported = list(__all__)
    try:
        with warnings.catch_warnings():  # an overwrite, asked for: timm's warning would only repeat it
            warnings.filterwarnings("ignore", message=f"Overwriting {re.escape(name)} in registry")
            register_model(_entrypoint(name))
    finally:
        __all__[:] = exported  # timm appends each model's name to the registering module's __all__
    return name


__all__ = ["BUNDLED", "TimmCMT", "checkpoint_filter_fn", "cmt_from_kwargs", "create_cmt", "register_spec"]

for _bundled in BUNDLED:
    register_spec(_bundled, overwrite=True)  # only a reload of this module finds them registered
