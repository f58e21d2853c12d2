"""An independent, literal forward pass of the released CMT, in torch.nn.functional only.

It reads a state dict in the OFFICIAL key layout (`blocks_a.0.attn.sr.0.weight`,
`relative_pos_a`, `_fc.weight`, ...) and follows the released architecture (cmt-architecture.md)
step by step, in eval mode (BatchNorm uses running statistics, dropout and drop
path are identities). Nothing here imports cmt_gen: the builder is tested
against this, so the two must not share code. Every hyper-parameter (depths,
heads, reduction ratios) is read from the tensors themselves.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

STAGE_LETTERS = "abcd"
BN_EPS = 1e-5
PATCH_LN_EPS = 1e-5  # patch aggregation: nn.LayerNorm's default
BLOCK_LN_EPS = 1e-6  # the blocks' norm1 and norm2


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    """BatchNorm in eval mode: running statistics, then the affine transform."""
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=BN_EPS)


def _ln(x: torch.Tensor, sd: dict, prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _conv(x: torch.Tensor, sd: dict, prefix: str, stride: int = 1, padding: int = 0, depthwise: bool = False):
    weight = sd[f"{prefix}.weight"]
    groups = weight.shape[0] if depthwise else 1
    return F.conv2d(x, weight, sd[f"{prefix}.bias"], stride=stride, padding=padding, groups=groups)


def _linear(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.linear(x, sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias"))


def stem(x: torch.Tensor, sd: dict) -> torch.Tensor:
    """Three 3x3 convs (the first stride 2), each followed by GELU and then BatchNorm."""
    for i in (1, 2, 3):
        x = _conv(x, sd, f"stem_conv{i}", stride=2 if i == 1 else 1, padding=1)
        x = F.gelu(x)
        x = _bn(x, sd, f"stem_norm{i}")
    return x


def patch_aggregation(x: torch.Tensor, sd: dict, letter: str) -> tuple[torch.Tensor, int, int]:
    """2x2 conv stride 2, flatten to (B, N, C) tokens, LayerNorm (eps 1e-5)."""
    x = _conv(x, sd, f"patch_embed_{letter}.proj", stride=2)
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    return _ln(tokens, sd, f"patch_embed_{letter}.norm", PATCH_LN_EPS), h, w


def _image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def _tokens(image: torch.Tensor) -> torch.Tensor:
    return image.flatten(2).transpose(1, 2)


def attention(x: torch.Tensor, h: int, w: int, sd: dict, prefix: str, heads: int,
              relative_pos: torch.Tensor) -> torch.Tensor:
    """LMHSA: q from x; k, v from the k x k depthwise-reduced map (+BN); softmax(q k^T s + P) v; proj."""
    b, n, c = x.shape
    d = c // heads
    q = _linear(x, sd, f"{prefix}.q").reshape(b, n, heads, d).permute(0, 2, 1, 3)
    if f"{prefix}.sr.0.weight" in sd:
        k_ratio = sd[f"{prefix}.sr.0.weight"].shape[-1]
        reduced = _conv(_image(x, h, w), sd, f"{prefix}.sr.0", stride=k_ratio, depthwise=True)
        reduced = _bn(reduced, sd, f"{prefix}.sr.1")
        kv_in = _tokens(reduced)
    else:
        kv_in = x
    m = kv_in.shape[1]
    k = _linear(kv_in, sd, f"{prefix}.k").reshape(b, m, heads, d).permute(0, 2, 1, 3)
    v = _linear(kv_in, sd, f"{prefix}.v").reshape(b, m, heads, d).permute(0, 2, 1, 3)
    logits = torch.matmul(q, k.transpose(-2, -1)) * d ** -0.5
    logits = logits + relative_pos  # (heads, N, M), broadcast over the batch
    weights = torch.softmax(logits, dim=-1)
    out = torch.matmul(weights, v).permute(0, 2, 1, 3).reshape(b, n, c)
    return _linear(out, sd, f"{prefix}.proj")


def irffn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    """1x1 conv, GELU, BN; y = DW3x3(y) + y, GELU, BN; 1x1 conv, BN. On the image view."""
    y = _bn(F.gelu(_conv(x, sd, f"{prefix}.conv1.0")), sd, f"{prefix}.conv1.2")
    y = _conv(y, sd, f"{prefix}.proj", padding=1, depthwise=True) + y
    y = _bn(F.gelu(y), sd, f"{prefix}.proj_bn")
    return _bn(_conv(y, sd, f"{prefix}.conv2.0"), sd, f"{prefix}.conv2.1")


def block(x: torch.Tensor, h: int, w: int, sd: dict, prefix: str, heads: int,
          relative_pos: torch.Tensor) -> torch.Tensor:
    """LPU, then x + LMHSA(LN1(x)), then x + IRFFN(LN2(x))."""
    image = _image(x, h, w)
    x = _tokens(image + _conv(image, sd, f"{prefix}.proj", padding=1, depthwise=True))
    x = x + attention(_ln(x, sd, f"{prefix}.norm1", BLOCK_LN_EPS), h, w, sd, f"{prefix}.attn", heads, relative_pos)
    y = irffn(_image(_ln(x, sd, f"{prefix}.norm2", BLOCK_LN_EPS), h, w), sd, f"{prefix}.mlp")
    return x + _tokens(y)


def head(x: torch.Tensor, sd: dict, pre_logits: bool = False) -> torch.Tensor:
    """1x1 conv to 1280, BN, Swish, global average pool, (dropout: identity), linear."""
    x = _bn(_conv(x, sd, "_fc"), sd, "_bn")
    x = x * torch.sigmoid(x)
    x = x.mean(dim=(2, 3))
    return x if pre_logits else _linear(x, sd, "head")


def depth_of(sd: dict, letter: str) -> int:
    pattern = re.compile(rf"^blocks_{letter}\.(\d+)\.")
    return 1 + max(int(m.group(1)) for key in sd if (m := pattern.match(key)))


def forward_features(sd: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """The four stage maps (B, C_i, H_i, W_i) of the released network."""
    x = stem(x, sd)
    maps = []
    for letter in STAGE_LETTERS:
        tokens, h, w = patch_aggregation(x, sd, letter)
        relative_pos = sd[f"relative_pos_{letter}"]
        heads = relative_pos.shape[0]
        if relative_pos.shape[1] != h * w:
            raise ValueError(f"stage {letter}: the released model is built for {relative_pos.shape[1]} tokens, "
                             f"got {h * w}")
        for j in range(depth_of(sd, letter)):
            tokens = block(tokens, h, w, sd, f"blocks_{letter}.{j}", heads, relative_pos)
        x = _image(tokens, h, w)
        maps.append(x)
    return maps


@torch.no_grad()
def reference_forward(sd: dict, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    """Logits (or the pooled 1280-d features) of the released CMT for input x."""
    return head(forward_features(sd, x)[-1], sd, pre_logits=pre_logits)


def random_official_state_dict(layout: dict[str, list[int]], seed: int = 0,
                               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in the official layout, scaled so that activations stay O(1) through the depth.

    BatchNorm running statistics are random too, so that eval-mode BN is not an identity.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=dtype) * std + mean

    def uniform(shape, low, high):
        return torch.rand(shape, generator=gen, dtype=dtype) * (high - low) + low

    sd: dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(int(torch.randint(1, 1000, (), generator=gen)), dtype=torch.long)
        elif key.startswith("relative_pos_"):
            sd[key] = normal(shape)
        elif key.endswith("running_mean"):
            sd[key] = normal(shape, 0.2)
        elif key.endswith("running_var"):
            sd[key] = uniform(shape, 0.5, 2.0)
        elif key.endswith(".bias"):
            sd[key] = normal(shape, 0.05)
        elif len(shape) == 1:  # a norm's weight
            sd[key] = normal(shape, 0.1, 1.0)
        else:  # conv or linear weight: fan-in scaling
            fan_in = 1
            for side in shape[1:]:
                fan_in *= side
            sd[key] = normal(shape, fan_in ** -0.5)
    return sd
