"""`build_model(spec)`: a spec becomes a `CMT` module with the timm model API.

The spec is first expanded into per-stage constructor arguments (drop-path
rate by global block index, the stage's token grid), then modules are built;
layers never read the spec themselves.
"""

import torch
from torch import nn

from cmt_gen.deploy.hook import TRAINING_REFUSED, DeployForm
from cmt_gen.deploy.rewrite import reparameterize_network
from cmt_gen.model.layers import ClassifierHead, CMTStage, InputCheck, Stem, check_pool
from cmt_gen.model.pretrained_cfg import pretrained_cfg_for
from cmt_gen.spec.schema import CMTSpec


def stage_arguments(spec: CMTSpec) -> list[dict]:
    """Constructor arguments of every stage, decoded from the spec."""
    total = sum(s.depth for s in spec.stages)
    rates = [spec.drop_path * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    args, c_in, start = [], spec.stem.channels, 0
    for stage, grid in zip(spec.stages, spec.stage_sizes(), strict=True):
        args.append(dict(
            c_in=c_in, dim=stage.channels, depth=stage.depth, heads=stage.heads,
            reduction=stage.reduction, hidden=stage.hidden, options=spec.block, qkv_bias=spec.qkv_bias,
            grid=grid, drop_path=rates[start:start + stage.depth],
        ))
        c_in, start = stage.channels, start + stage.depth
    return args


class StageFeatureInfo(list):
    """`feature_info`: one dict per stage (num_chs, reduction, module), plus timm's accessors."""

    def channels(self, idx: int | None = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None):
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None):
        return self._get("module", idx)

    def _get(self, key: str, idx: int | None):
        return [info[key] for info in self] if idx is None else self[idx][key]


def take_indices(n: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """timm's rule: None takes every stage, an int n the last n, a list the named ones (negatives from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices={indices}: an int takes the last 1..{n} stages")
        return list(range(n - indices, n))
    outside = [i for i in indices if not -n <= i < n]
    if outside or not indices:  # i % n would quietly pick another stage
        raise ValueError(f"stage indices {list(indices)} must be in -{n}..{n - 1} and not empty")
    return [i % n for i in indices]


class CMT(nn.Module):
    """A CMT network: stem, stages of CMT blocks, classifier head.

    Speaks timm's model API: `forward_features`, `forward_head`,
    `forward_intermediates`, `prune_intermediate_layers`, `reset_classifier`,
    `group_matcher`, `no_weight_decay`, `num_features`, `feature_info`,
    `pretrained_cfg`, `set_grad_checkpointing`. The forward is scriptable and
    traceable (jit, FX, torch.export) at any legal size.
    """

    def __init__(self, spec: CMTSpec, global_pool: str = "avg", features_only: bool = False):
        super().__init__()
        self.spec = spec
        self.total_stride = spec.total_stride
        self.input_check = InputCheck(spec.total_stride)
        self.stem = Stem(spec.in_channels, spec.stem.channels)
        # A Sequential (keys stages.{i}.*): timm's FeatureListNet and torchvision's
        # IntermediateLayerGetter can then walk stem and stages as children.
        self.stages = nn.Sequential(*(CMTStage(**a) for a in stage_arguments(spec)))
        self.num_features = spec.stages[-1].channels
        self.head_hidden_size = spec.head.fc_channels
        self.num_classes = 0 if features_only else spec.num_classes
        self.global_pool = global_pool
        self.feature_info = StageFeatureInfo(
            {"num_chs": s.channels, "reduction": 2 ** (i + 2), "module": f"stages.{i}", "stage": i}
            for i, s in enumerate(spec.stages)
        )
        self.head = None if features_only else ClassifierHead(
            self.num_features, spec.head.fc_channels, spec.num_classes, spec.head.dropout, global_pool
        )
        self.pretrained_cfg = pretrained_cfg_for(spec)
        self.default_cfg = self.pretrained_cfg
        self.apply(init_weights)

    @property
    def features_only(self) -> bool:
        return self.head is None

    # ------------------------------------------------------------ forward paths
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled last-stage map (B, C_last, H/stride, W/stride)."""
        x = self.stem(self.input_check(x))
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("this model has no head (built with features_only=True or pruned)")
        return self.head(x, pre_logits=pre_logits)

    def stage_maps(self, x: torch.Tensor, take: list[int], last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs stages 0..last; returns the last map run and the maps of the stages in `take`."""
        x = self.stem(self.input_check(x))
        maps: list[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if i <= last:
                x = stage(x)
                if i in take:
                    maps.append(x)
        return x, maps

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage maps at strides 4, 8, 16, 32 (as selected), plus the final map unless only those.

        timm's signature: `indices` is a list of stage indices or an int n for the
        last n stages; CMT has no final norm, so `norm` changes nothing.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r}: choose 'NCHW' or 'NHWC'")
        n = len(self.stages)
        take = take_indices(n, indices)
        last = max(take) if stop_early or intermediates_only else n - 1
        x, maps = self.stage_maps(x, take, last)
        if output_fmt == "NHWC":
            maps = [m.permute(0, 2, 3, 1) for m in maps]
        return maps if intermediates_only else (x, maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------ timm API
    def prune_intermediate_layers(self, indices: int | list[int] | None = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one `indices` needs (and the head); returns the absolute indices."""
        take = take_indices(len(self.stages), indices)
        self.stages = self.stages[: max(take) + 1]
        if prune_head:
            self.head = None
            self.num_classes = 0
        return take

    def get_classifier(self) -> nn.Module:
        if self.head is None:
            raise RuntimeError("this model has no head (built with features_only=True or pruned)")
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (0 removes it; global_pool='' then gives the unpooled head map)."""
        if self.head is None:
            raise RuntimeError("this model has no head (built with features_only=True or pruned)")
        pool = self.global_pool if global_pool is None else global_pool
        check_pool(pool, num_classes)
        self.num_classes, self.global_pool, self.head.global_pool = num_classes, pool, pool
        fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        fc.apply(init_weights)
        self.head.fc = fc.to(next(self.head.parameters()).device)  # the deploy head has no .conv

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for timm's layer-wise LR decay: stem, then stage (or block) order."""
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.(?:downsample|position_bias)", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def train(self, mode: bool = True) -> "CMT":
        """As nn.Module's, but refused (before any flag changes) once a layer is in the deploy form."""
        if mode and any(isinstance(m, DeployForm) for m in self.modules()):
            raise RuntimeError(TRAINING_REFUSED)
        return super().train(mode)

    def reparameterize(self, attention_kernel: "str | None" = None) -> "CMT":
        """Rewrite in place into the deploy form: same outputs, faster (eval only; see `deploy.rewrite`)."""
        reparameterize_network(self, attention_kernel)
        return self

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("position_bias", "position_bias_table"))}


class CMTFeatures(CMT):
    """A headless CMT whose forward returns the maps of the `out_indices` stages (NCHW, shallow first)."""

    def __init__(self, spec: CMTSpec, out_indices: list[int] | tuple[int, ...] | None = None):
        super().__init__(spec, features_only=True)
        self.out_indices = take_indices(len(spec.stages), list(out_indices) if out_indices is not None else None)
        self.feature_info = StageFeatureInfo(self.feature_info[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return self.stage_maps(x, self.out_indices, max(self.out_indices))[1]


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


def build_model(spec, features_only: bool = False, overrides=None, out_indices=None,
                global_pool: str = "avg") -> CMT:
    """Build the network a spec describes; `spec` may be a CMTSpec, a bundled name, a path or a dict.

    `features_only=True` gives a `CMTFeatures` (the maps of `out_indices`, all stages by default).
    """
    if not isinstance(spec, CMTSpec):
        from cmt_gen.spec.loading import load_spec

        spec = load_spec(spec, overrides)
    elif overrides:
        raise TypeError("overrides apply when loading a spec; pass a name, path or dict")
    if features_only:
        return CMTFeatures(spec, out_indices)
    if out_indices is not None:
        raise TypeError("out_indices applies to features_only=True models")
    return CMT(spec, global_pool=global_pool)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "CMT", "CMTFeatures", "StageFeatureInfo", "build_model", "count_parameters", "init_weights", "stage_arguments",
]
