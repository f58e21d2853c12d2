"""`build_model(spec)`: a spec becomes a `CMT` module with the timm model API.

The spec is first expanded into per-stage constructor arguments (drop-path
rate by global block index, the stage's token grid), then modules are built;
layers never read the spec themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_gen.errors import InputShapeError
from cmt_gen.model.layers import ClassifierHead, CMTStage, Stem
from cmt_gen.spec.schema import CMTSpec


def stage_arguments(spec: CMTSpec) -> list[dict]:
    """Constructor arguments of every stage, decoded from the spec."""
    total = sum(s.depth for s in spec.stages)
    rates = [spec.drop_path * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    args, c_in, start = [], spec.stem.channels, 0
    for stage, grid in zip(spec.stages, spec.stage_sizes(), strict=True):
        args.append(dict(
            c_in=c_in, dim=stage.channels, depth=stage.depth, heads=stage.heads,
            reduction=stage.reduction, hidden=stage.hidden, qkv_bias=spec.qkv_bias,
            lpu=spec.block.lpu, reduction_kind=spec.block.reduction_kind.value,
            position_bias=spec.block.position_bias.value, grid=grid,
            fused=spec.block.attention.value == "fused",
            drop_path=rates[start:start + stage.depth],
        ))
        c_in, start = stage.channels, start + stage.depth
    return args


class CMT(nn.Module):
    """A CMT network: stem, stages of CMT blocks, classifier head.

    Speaks timm's model API: `forward_features`, `forward_head`,
    `forward_intermediates`, `reset_classifier`, `num_features`,
    `feature_info`, `set_grad_checkpointing`.
    """

    def __init__(self, spec: CMTSpec, features_only: bool = False):
        super().__init__()
        self.spec = spec
        self.features_only = features_only
        self.total_stride = spec.total_stride
        self.stem = Stem(spec.in_channels, spec.stem.channels)
        self.stages = nn.ModuleList(CMTStage(**a) for a in stage_arguments(spec))
        self.num_features = spec.stages[-1].channels
        self.head_hidden_size = spec.head.fc_channels
        self.num_classes = spec.num_classes
        self.feature_info = [
            {"num_chs": s.channels, "reduction": 2 ** (i + 2), "module": f"stages.{i}"}
            for i, s in enumerate(spec.stages)
        ]
        self.head = None if features_only else ClassifierHead(
            self.num_features, spec.head.fc_channels, spec.num_classes, spec.head.dropout
        )
        self.apply(init_weights)

    # ------------------------------------------------------------ forward paths
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise InputShapeError(f"expected a (batch, channels, height, width) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.total_stride
        if h % s or w % s:
            raise InputShapeError(
                f"input {h}x{w} is not a multiple of the total stride {s}; "
                f"use e.g. {max(s, h // s * s)}x{max(s, w // s * s)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled last-stage map (B, C_last, H/stride, W/stride)."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("this model was built with features_only=True and has no head")
        return self.head(x, pre_logits=pre_logits)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              intermediates_only: bool = False, stop_early: bool = False):
        """Stage maps at strides 4, 8, 16, 32 (as selected), plus the final map unless only those.

        `indices` is a list of stage indices, or an int n for the last n stages.
        """
        n = len(self.stages)
        if indices is None:
            wanted = list(range(n))
        elif isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices}: an int takes the last 1..{n} stages")
            wanted = list(range(n - indices, n))
        else:
            outside = [i for i in indices if not -n <= i < n]
            if outside or not indices:  # i % n would quietly pick another stage
                raise ValueError(f"stage indices {list(indices)} must be in -{n}..{n - 1} and not empty")
            wanted = [i % n for i in indices]
        self._check_input(x)
        x = self.stem(x)
        maps = []
        last = max(wanted) if stop_early or intermediates_only else n - 1
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in wanted:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------ timm API
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0 removes it); the new layer is freshly initialised."""
        if self.head is None:
            raise RuntimeError("this model was built with features_only=True and has no head")
        self.num_classes = num_classes
        fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        fc.apply(init_weights)
        device = self.head.conv.weight.device
        self.head.fc = fc.to(device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("position_bias")}


def init_weights(module: nn.Module) -> None:
    """The released scheme: trunc-normal(0.02) linears, Kaiming fan-out convs, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(spec, features_only: bool = False, overrides=None) -> CMT:
    """Build the network a spec describes; `spec` may be a CMTSpec, a bundled name, a path or a dict."""
    if not isinstance(spec, CMTSpec):
        from cmt_gen.spec.loading import load_spec

        spec = load_spec(spec, overrides)
    elif overrides:
        raise TypeError("overrides apply when loading a spec; pass a name, path or dict")
    return CMT(spec, features_only=features_only)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CMT", "build_model", "count_parameters", "init_weights", "stage_arguments"]
