"""CLIP-style text tower (GV ``models/transformer.py``) and the CLIP BPE tokenizer it reads.

Causal pre-norm blocks with QuickGELU, final LayerNorm, pooled at the EOT token (the largest token id).
Because attention is causal, nothing after a sequence's EOT can change its EOT state: the forward pass
crops the batch to its longest EOT position (and, when it pays, runs short and long sequences as two
separately cropped groups), which is exact and saves most of the work on short captions and prompts.
Repeated texts in a batch are encoded once (the projection head after this tower still sees every row).
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import torch
from torch import nn

from cocu_core.model.layers import Block

_TOKENIZER = None
_TOKENIZER_LOCK = threading.Lock()


def clip_tokenizer():
    """Why: one shared open_clip SimpleTokenizer (its BPE table takes a moment to build)."""
    global _TOKENIZER
    with _TOKENIZER_LOCK:
        if _TOKENIZER is None:
            from open_clip.tokenizer import SimpleTokenizer

            _TOKENIZER = SimpleTokenizer()
        return _TOKENIZER


def tokenize(texts: str | Sequence[str], context_length: int) -> torch.LongTensor:
    """Why: (N, context_length) CLIP BPE ids, zero-padded; long texts are truncated with their EOT kept."""
    if isinstance(texts, str):
        texts = [texts]
    return clip_tokenizer()(list(texts), context_length=context_length)


class TextTransformer(nn.Module):
    """Token + position embeddings, causal blocks, final LayerNorm; (N, L) ids -> (N, width) EOT states."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, True, 0.0, act, eps) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width, eps=eps)
        self.init_weights()

    def init_weights(self) -> None:
        """Why: CLIP/GV text init: embeddings N(0, .02)/N(0, .01), depth-scaled projections, zero biases."""
        width, layers = self.positional_embedding.shape[1], max(1, len(self.blocks))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std, proj_std, fc_std = width ** -0.5, width ** -0.5 * (2 * layers) ** -0.5, (2 * width) ** -0.5
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
            nn.init.normal_(blk.attn.proj.weight, std=proj_std)
            nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
            for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
                nn.init.zeros_(lin.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Why: (N, L) token ids -> (N, width) states at each sequence's EOT (argmax id)."""
        if tokens.ndim != 2:
            raise ValueError(f"text tokens must be (N, L), got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.context_length:
            raise ValueError(f"text of {tokens.shape[1]} tokens exceeds the context length {self.context_length}")
        if tokens.shape[0] == 0:
            return self.ln_final(self.token_embedding(tokens[:, :0]).sum(1))
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        if unique.shape[0] < tokens.shape[0]:  # repeated texts (e.g. a caption padding empty prompt slots)
            return self._forward_distinct(unique)[inverse]
        return self._forward_distinct(tokens)

    def _forward_distinct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Why: crop (or split into two crops) past the EOTs, then run the blocks."""
        eot = tokens.argmax(dim=-1)
        plan = length_buckets(eot.cpu() + 1)
        if len(plan) == 1:
            return self._encode(tokens[:, : plan[0][1]], eot)
        outs, order = [], []
        for idx, length in plan:
            idx = idx.to(tokens.device)
            outs.append(self._encode(tokens[idx, :length], eot[idx]))
            order.append(idx)
        return torch.cat(outs)[torch.argsort(torch.cat(order))]

    def _encode(self, tokens: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Why: the transformer on (n, length) ids already cropped past every EOT; LayerNorm on EOT rows only."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for blk in self.blocks:
            x = blk(x, causal=True)
        return self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])


def length_buckets(lengths: torch.Tensor, min_saving: float = 0.25) -> list[tuple[Optional[torch.Tensor], int]]:
    """Why: split a batch into (short, long) sequences when cropping each to its own longest saves enough.

    Causal attention makes every sequence independent of the padding after its EOT, so any grouping is
    exact. Captions next to short prompts (the multi-label input) typically halve the text work this way.
    Returns [(None, L)] for one crop of the whole batch, else [(indices, L_short), (indices, L_long)].
    """
    longest = int(lengths.max())
    n = lengths.numel()
    values, counts = torch.unique(lengths, return_counts=True)
    if values.numel() < 2:
        return [(None, longest)]
    below = torch.cumsum(counts, 0)[:-1]  # sequences no longer than values[i], for a split after value i
    cost = below * values[:-1] + (n - below) * longest
    best = int(torch.argmin(cost))
    if float(cost[best]) > (1.0 - min_saving) * n * longest:
        return [(None, longest)]
    cut = int(values[best])
    short = torch.nonzero(lengths <= cut).flatten()
    long = torch.nonzero(lengths > cut).flatten()
    return [(short, cut), (long, longest)]
