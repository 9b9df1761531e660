"""Shared synthetic inputs for the curation tests (random and toy-like)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from synthetic import toy_like  # noqa: E402,F401


def l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_inputs(n: int = 150, d: int = 32, n_concepts: int = 30, max_len: int = 5, seed: int = 0):
    """Random embeddings with a shared component (positive similarities, as with CLIP)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(d) * 2
    img = l2(base + rng.standard_normal((n, d)))
    cap = l2(img + 0.5 * rng.standard_normal((n, d)))
    T = l2(base + rng.standard_normal((n_concepts, d)))
    lens = rng.integers(0, max_len + 1, n)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(lens)
    ids = np.concatenate([rng.choice(n_concepts, k, replace=False) for k in lens]).astype(np.int32)
    keys = [f"s{i:05d}" for i in range(n)]
    captions = [f"caption {i}" for i in range(n)]
    names = [f"c{i}" for i in range(n_concepts)]
    return keys, captions, (offsets, ids), img, cap, T, names
