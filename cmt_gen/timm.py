"""timm integration: `import cmt_gen.timm` puts the bundled CMTs in timm's model registry.

After the import, `timm.create_model("cmt_s", pretrained=..., num_classes=...,
in_chans=..., drop_rate=..., drop_path_rate=..., global_pool=...,
features_only=..., out_indices=...)` behaves as for timm's own models:
timm's builder resolves the pretrained cfg, loads weights (released
checkpoints are converted by `checkpoint_filter_fn`) and wraps feature
models. `register_spec` adds a user's spec the same way. timm is an optional
extra (`pip install 'cmt-gen[timm]'`); `import cmt_gen` never imports it.

Only timm's public registry API is used (`register_model`, `is_model`,
`model_entrypoint`), so every timm from the floor on works. Registering a
name again replaces its entrypoint and cfg; older timm releases (1.0.3 among
them) keep listing the previous registration's tagged names, since only
timm's private tables could remove them.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from cmt_gen.errors import CmtGenError

try:  # timm's public registry API only: its private tables differ between releases
    from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, model_entrypoint, register_model
except ImportError as exc:
    if importlib.util.find_spec("timm") is None:
        raise CmtGenError("cmt_gen.timm needs timm: pip install 'cmt-gen[timm]'", source="cmt_gen.timm") from exc
    raise CmtGenError(f"timm is installed but cmt_gen.timm cannot use it ({exc}); it needs timm >= 1.0.3 "
                      "with a torchvision built for this torch", source="cmt_gen.timm") from exc

from cmt_gen.model.convert import convert_official_state_dict, is_official_layout, unwrap_checkpoint
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


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's `pretrained_filter_fn`: unwrap `model` / `model_ema` / `state_dict`, convert the released keys."""
    state_dict = unwrap_checkpoint(state_dict)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if is_official_layout(state_dict):
        return convert_official_state_dict(state_dict)
    return dict(state_dict)


def cmt_from_kwargs(spec: CMTSpec, num_classes: int | None = None, in_chans: int | None = None,
                    drop_rate: float | None = None, drop_path_rate: float | None = None,
                    global_pool: str = "avg") -> CMT:
    """The `model_cls` timm's builder calls: timm's keyword arguments become spec overrides."""
    overrides = {key: value for key, value in (
        ("num_classes", num_classes), ("in_channels", in_chans),
        ("head.dropout", drop_rate), ("drop_path", drop_path_rate),
    ) if value is not None}
    if overrides:
        spec = load_spec(spec_to_dict(spec), overrides)
    return CMT(spec, global_pool=global_pool)


def create_cmt(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Build a registered CMT through timm's builder (pretrained cfg, weights, feature wrappers)."""
    spec = _SPECS[name]
    return build_model_with_cfg(
        cmt_from_kwargs, name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(len(spec.stages))), flatten_sequential=True),
        spec=spec, **kwargs,
    )


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


def register_spec(spec_or_path: CMTSpec | str | Path | Mapping, name: str | None = None) -> str:
    """Register a spec (a CMTSpec, a bundled name, a YAML path or a dict) as a timm model; returns its name."""
    spec = spec_or_path if isinstance(spec_or_path, CMTSpec) else load_spec(spec_or_path)
    name = name or spec.name
    source = str(spec_or_path) if isinstance(spec_or_path, (str, Path)) else spec.name
    if not _NAME.fullmatch(name):
        raise CmtGenError(f"{name!r} is not a usable timm model name (letters, digits, underscores)",
                          source=source, field="name")
    if is_model(name) and getattr(model_entrypoint(name), "__module__", None) != __name__:
        raise CmtGenError(f"timm already has a model named {name!r}; pass another name=", source=source,
                          field="name")
    spec = spec.model_copy(update={"name": name})
    cfg = _timm_cfg(spec)
    key = f"{name}.{TAG}" if cfg["url"] else name
    default_cfgs.pop(name, None)
    default_cfgs.update(generate_default_cfgs({key: cfg}))
    _SPECS[name] = spec
    exported = list(__all__)
    with warnings.catch_warnings():  # re-registering our own name replaces it quietly
        warnings.filterwarnings("ignore", message=f"Overwriting {re.escape(name)} in registry")
        register_model(_entrypoint(name))
    __all__[:] = exported  # timm appends each model's name to the registering module's __all__
    return name


__all__ = ["BUNDLED", "checkpoint_filter_fn", "cmt_from_kwargs", "create_cmt", "register_spec"]

for _bundled in BUNDLED:
    register_spec(_bundled)
