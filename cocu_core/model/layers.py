"""Transformer pieces shared by both towers: fused-qkv attention on SDPA, the pre-norm block, MixerMlp.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on CPU and CUDA);
q/k/v come from one fused Linear (GV's ``qkv_fuse``), so a block costs one projection GEMM instead of three.
"""

from __future__ import annotations

from typing import Type

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, QuickGELU
from torch import nn

ACTIVATIONS: dict[str, Type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


def act_layer(name: str) -> Type[nn.Module]:
    """Why: configs name activations as strings (they go into checkpoints and HF configs)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, optionally causal."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Why: one GEMM for q, k, v, then the fused SDPA kernel (no materialised attention matrix)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Multi-head attention of queries over another token set; k and v share one fused projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Why: group tokens read the image tokens through the fused SDPA kernel."""
        b, g, c = query.shape
        n, h = key.shape[1], self.num_heads
        q = self.q(query).view(b, g, h, c // h).transpose(1, 2)
        k, v = self.kv(key).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, g, c))


class Block(nn.Module):
    """Pre-norm transformer block (GV's AttnBlock / CLIP's ResidualAttentionBlock) with drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        act: str = "gelu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer(act))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Why: x + attn(norm(x)), x + mlp(norm(x)), each branch under stochastic depth."""
        x = x + self.drop_path(self.attn(self.norm1(x), causal))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MixerMlp(Mlp):
    """An Mlp over the token axis: maps (B, S_in, C) to (B, S_out, C) (GV's MixerMlp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Why: mixing tokens, not channels, turns S_in group tokens into S_out."""
        return super().forward(x.transpose(1, 2)).transpose(1, 2)
