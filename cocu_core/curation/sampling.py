"""Per-step concept sampling from an archive entry, for every variant.

Cluster sampling (cocu): draw min(k, #clusters) distinct clusters with probabilities
softmax(mean score in the cluster), sequentially without replacement, then one concept from each
drawn cluster with probabilities softmax(score) within it. Naive sampling: ``topk`` takes the k
best-ranked concepts; ``weighted`` draws k distinct concepts with probabilities softmax(score),
sequentially without replacement. Draws without replacement use the Gumbel-top-k trick, which is
exactly sequential softmax sampling. Fewer than k picks are padded with the raw caption, as
GroupViT's loader does.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cocu_core.curation.archive import ArchiveEntry
from cocu_core.curation.variants import get_variant


def gumbel_topk(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Why: k distinct indices, in draw order, distributed as sequential softmax draws."""
    g = logits - np.log(-np.log(rng.random(len(logits)).clip(1e-300, None)))
    return np.argsort(-g, kind="stable")[:k]


class ConceptSampler:
    """Draws k concepts per training step for one variant; seeded for reproducibility."""

    def __init__(self, variant: str, k: int = 3, seed: int = 0, naive_sampling: str = "topk"):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if naive_sampling not in ("topk", "weighted"):
            raise ValueError(f"naive_sampling must be 'topk' or 'weighted', got {naive_sampling!r}")
        self.variant = get_variant(variant)
        self.k = k
        self.naive_sampling = naive_sampling
        self.rng = np.random.default_rng(seed)

    def sample(self, entry: ArchiveEntry, rng: Optional[np.random.Generator] = None) -> list[str]:
        """Why: the k texts one step trains on (concepts, then the caption as padding)."""
        picks = self.sample_indices(entry, rng)
        out = [entry.concepts[i] for i in picks]
        return out + [entry.caption] * (self.k - len(out))

    def sample_indices(self, entry: ArchiveEntry, rng: Optional[np.random.Generator] = None) -> list[int]:
        """Why: positions into entry.concepts, at most k, in draw order."""
        rng = rng or self.rng
        r = np.asarray(entry.scores, np.float64)
        n = len(r)
        if n == 0:
            return []
        if self.variant.sampling == "cluster":
            if entry.cluster_ids is None:
                raise ValueError(f"sample {entry.key!r}: the archive has no cluster ids (curated as a naive variant)")
            labels = np.asarray(entry.cluster_ids)
            n_cl = int(labels.max()) + 1
            means = np.bincount(labels, weights=r, minlength=n_cl) / np.bincount(labels, minlength=n_cl).clip(1)
            chosen = gumbel_topk(means, min(self.k, n_cl), rng)
            out = []
            for cl in chosen:
                members = np.flatnonzero(labels == cl)
                out.append(int(members[gumbel_topk(r[members], 1, rng)[0]]))
            return out
        if self.naive_sampling == "topk":
            return [int(i) for i in np.lexsort((np.asarray(entry.concept_ids), -r))[: self.k]]
        return [int(i) for i in gumbel_topk(r, min(self.k, n), rng)]
