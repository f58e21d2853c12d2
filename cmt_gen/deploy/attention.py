"""The deploy form of the attention path: the K/V reduction and the lightweight MHSA (see `deploy`)."""

from __future__ import annotations

import torch
from torch import nn

from cmt_gen.deploy.attention_kernels import attend, default_kernel
from cmt_gen.deploy.blocks import (
    BiasAtSize,
    FusedConv,
    fold_linear_input,
    linear_layer,
    map_as_tokens,
    set_conv,
    tokens_as_map,
)
from cmt_gen.deploy.folding import fold_affine_after, fold_affine_before, norm_affine
from cmt_gen.deploy.hook import DeployForm
from cmt_gen.ops import capture


class DeployKVReduction(DeployForm, nn.Module):
    """Reduced K/V source as tokens: the strided conv (its BN folded in) or the pool, then conv_ln's
    LayerNorm (affine-free once the attention folded its affine into K/V) or nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(map_as_tokens(self.shrink(x)))


def reparameterize_kv_reduction(reduce: nn.Module, kernel: str | None = None) -> None:
    if reduce.kind == "dwconv_bn":
        scale, shift = norm_affine(reduce.norm)
        set_conv(reduce.conv, *fold_affine_after(reduce.conv.weight, reduce.conv.bias, scale, shift))
        reduce.norm = nn.Identity()
    if reduce.kind == "avgpool":
        reduce.shrink, reduce.norm = reduce.pool, nn.Identity()
    else:
        reduce.shrink = FusedConv(reduce.conv)
    reduce.pool = reduce.conv = None  # the training form's slots, unused now
    reduce.__class__ = DeployKVReduction


def affine_free(norm: nn.LayerNorm) -> nn.LayerNorm:
    """The same normalisation without weight and bias (they were folded into the next layer)."""
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)


# ---------------------------------------------------------------- attention
class DeployLightweightMHSA(DeployForm, BiasAtSize, nn.Module):
    """LMHSA with the scale folded into q, one K/V matmul, a per-size cached position bias; with one
    head, the q and output projections folded onto the reduced keys and values."""

    def forward(self, x: torch.Tensor, h: int, w: int,
                position_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        source = self.reduce(tokens_as_map(x, h, w)) if self.reduce is not None else x
        bias = position_bias
        if self.position_bias is not None:
            bias = self._bias_at(self.position_bias, h, w, x.dtype)
        if self.heads == 1 and self.reduce is not None and self.kernel == "matmul" and self.fold_single_head:
            fold = True
            if not torch.jit.is_scripting():  # TorchScript drops this block only when it stands alone
                fold = not capture.inductor_on_cpu(x)
            if fold:
                return self._single_head(x, source, bias)
        q = self._split_heads(self.q(x), b, n)
        m = source.shape[1]
        kv = self.kv(source).reshape(b, m, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attend(q, kv[0], kv[1], bias, self.kernel)
        if self.heads == 1:
            return self.proj(out.reshape(b, n, c))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def _single_head(self, x: torch.Tensor, source: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """One head with K/V on N / r^2 reduced tokens: the q and output projections move onto the keys
        and values, `q k^T = x (W_q^T k^T) + b_q k^T` and `p v W_p^T = p (v W_p^T)`, so the two C x C
        linears run on M = N / r^2 rows instead of N (CMT stage 1: 49 instead of 3136 per image).
        Eager, TorchScript and exports; under torch.compile on CPU the forward keeps the projections,
        as inductor's code for this form ran slower (`benchmarks/NOTES.md`)."""
        k, v = self.kv(source).chunk(2, dim=-1)  # (B, M, C) each
        keys = torch.matmul(self.q.weight.t(), k.transpose(1, 2))  # (B, C, M)
        logits = torch.matmul(x, keys) if bias is None else torch.baddbmm(bias, x, keys)
        logits = logits + torch.matmul(k, self.q.bias[:, None]).transpose(1, 2)  # 2-D: fvcore counts it
        values = torch.matmul(v, self.proj.weight.t())  # (B, M, C)
        return torch.baddbmm(self.proj.bias, logits.softmax(dim=-1), values)

    def _split_heads(self, t: torch.Tensor, b: int, n: int) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, d); with one head a plain view, so no exported graph
        copies the tokens through a Transpose (ONNX Runtime does, at a cost: `benchmarks/NOTES.md`)."""
        if self.heads == 1:
            return t.reshape(b, 1, n, self.head_dim)
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)


def reparameterize_attention(attn: nn.Module, kernel: str | None = None) -> None:
    """Scale into q, K and V into one linear, the reduction's norm folded (conv_ln: into K/V)."""
    dim = attn.q.weight.shape[1]
    ones = torch.ones(dim, dtype=torch.float64, device=attn.q.weight.device)
    attn.q = linear_layer(*fold_affine_after(attn.q.weight, attn.q.bias, ones * attn.scale, ones * 0))
    zeros = torch.zeros(dim, dtype=attn.k.weight.dtype, device=attn.k.weight.device)
    attn.proj = linear_layer(attn.proj.weight, attn.proj.bias)
    kv = linear_layer(torch.cat([attn.k.weight, attn.v.weight]),
                 torch.cat([attn.k.bias if attn.k.bias is not None else zeros,
                            attn.v.bias if attn.v.bias is not None else zeros]))
    if attn.reduce is not None:
        if not isinstance(attn.reduce, DeployKVReduction):
            reparameterize_kv_reduction(attn.reduce)
        if attn.reduce.kind == "conv_ln":
            norm = attn.reduce.norm
            kv = fold_linear_input(kv, *norm_affine(norm))
            attn.reduce.norm = affine_free(norm)
    attn.kv = kv
    del attn.k, attn.v
    attn.kernel = kernel or default_kernel(attn.q.weight.device.type)
    attn.fold_single_head = True  # see `_single_head`; the benchmark's ablation turns it off
    attn._bias_cache = {}
    attn.__class__ = DeployLightweightMHSA


def fold_input_affine_into_attention(attn: DeployLightweightMHSA, scale: torch.Tensor,
                                     shift: torch.Tensor) -> None:
    """An affine on the attention's input (norm1's) folds into q and into the first layer of the
    K/V path that reads it exactly: the unpadded strided reduction conv, else (avgpool
    commutes with it, or no reduction) the K/V linear."""
    attn.q = fold_linear_input(attn.q, scale, shift)
    reduce = attn.reduce
    if reduce is None or reduce.kind == "avgpool":
        attn.kv = fold_linear_input(attn.kv, scale, shift)
    else:
        conv = reduce.shrink
        set_conv(conv, *fold_affine_before(conv.weight, conv.bias, scale, shift, groups=conv.groups))
