"""Concept text embeddings: prompt templates averaged then renormalised (CLIP's zero-shot recipe), cached."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cocu_core.config import fingerprint
from cocu_core.io import atomic_path, write_json_atomic


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def concept_text_embeddings(
    concepts: Sequence[str],
    templates: Sequence[str],
    encode_text_fn: Callable[[list[str]], np.ndarray],
    batch_size: int = 1024,
) -> np.ndarray:
    """Why: t_c = normalise(mean over templates of normalise(enc(template.format(c)))), [C, d] float32."""
    if not templates:
        raise ValueError("at least one prompt template is needed")
    if any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a '{{}}' placeholder, got {list(templates)}")
    texts = [t.format(c) for c in concepts for t in templates]
    parts = [np.asarray(encode_text_fn(texts[i:i + batch_size]), np.float32) for i in range(0, len(texts), batch_size)]
    if not parts:
        return np.zeros((0, 0), np.float32)
    emb = _l2(np.concatenate(parts).astype(np.float64))
    if not np.isfinite(emb).all():
        raise ValueError("the text encoder returned non-finite embeddings")
    emb = _l2(emb.reshape(len(concepts), len(templates), -1).mean(axis=1))
    return emb.astype(np.float32)


def embeddings_cache_key(concepts: Sequence[str], encoder_id: str, templates: Sequence[str]) -> str:
    """Why: embeddings are recomputed only when the vocabulary, the encoder or the templates change."""
    return fingerprint({"concepts": list(concepts), "encoder": encoder_id, "templates": list(templates)})


def cached_concept_embeddings(
    cache_dir: str | Path,
    concepts: Sequence[str],
    templates: Sequence[str],
    encoder_id: str,
    encode_text_fn: Callable[[list[str]], np.ndarray],
) -> tuple[np.ndarray, bool]:
    """Why: compute once per (vocabulary, encoder, templates); returns (embeddings, cache_hit)."""
    key = embeddings_cache_key(concepts, encoder_id, templates)
    path = Path(cache_dir) / f"concept_emb_{key}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape[0] == len(concepts):
            return emb, True
    emb = concept_text_embeddings(concepts, templates, encode_text_fn)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
    write_json_atomic(Path(cache_dir) / f"concept_emb_{key}.json",
                      {"key": key, "encoder": encoder_id, "templates": list(templates), "n_concepts": len(concepts)})
    return emb, False
