"""Toy-like synthetic curation inputs: clustered image/concept embeddings and short concept captions."""

from __future__ import annotations

import numpy as np


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def toy_like(n: int, d: int = 128, n_concepts: int = 60, n_topics: int = 12, seed: int = 0):
    """Why: like the toy world (few concepts, 0-3 per caption, images near their concepts)."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, d))
    common = rng.standard_normal(d) * 1.5  # CLIP-like: similarities mostly positive
    concept_topic = rng.integers(0, n_topics, n_concepts)
    T = _l2(common + topics[concept_topic] + 0.7 * rng.standard_normal((n_concepts, d)))
    lens = rng.choice(4, size=n, p=[0.1, 0.4, 0.35, 0.15])
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    # Each image has a topic; its caption names concepts of that topic (or any, 30%).
    img_topic = rng.integers(0, n_topics, n)
    by_topic = [np.flatnonzero(concept_topic == t) for t in range(n_topics)]
    ids = np.empty(offsets[-1], np.int32)
    pick_any = rng.random(len(ids)) < 0.3
    any_ids = rng.integers(0, n_concepts, len(ids))
    row_of = np.repeat(np.arange(n), lens)
    for t in range(n_topics):  # vectorised per topic, not per sample
        sel = np.flatnonzero(img_topic[row_of] == t)
        ids[sel] = by_topic[t][rng.integers(0, len(by_topic[t]), len(sel))] if len(by_topic[t]) else any_ids[sel]
    ids[pick_any] = any_ids[pick_any]
    # Deduplicate within a caption (extraction output is deduplicated).
    key = row_of.astype(np.int64) * n_concepts + ids
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(ids), bool)
    keep[first] = True
    ids = ids[keep]
    lens = np.bincount(row_of[keep], minlength=n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    img = _l2(common + topics[img_topic] + 1.0 * rng.standard_normal((n, d)))
    cap = _l2(img + 0.5 * rng.standard_normal((n, d)))
    keys = [f"{i:09d}" for i in range(n)]
    captions = [f"caption {i}" for i in range(n)]
    names = [f"concept{i}" for i in range(n_concepts)]
    return keys, captions, (offsets, ids), img, cap, T, names
