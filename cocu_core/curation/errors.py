"""Input validation shared by the production path and the reference, so both refuse the same inputs.

Policy: inputs that would silently corrupt archives are refused with a ``CurationInputError`` whose
message names the sample keys: duplicate keys, non-finite or all-zero embeddings, misaligned arrays,
concept ids outside the vocabulary, query rows out of range. Empty captions and captions with no
vocabulary match are *not* errors: the row is kept, its archive holds whatever its neighbours
contribute (possibly nothing) and the sampler pads with the raw caption.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cocu_core.errors import CocuError

_CHUNK = 65536


class CurationInputError(ValueError, CocuError):
    """Bad curation input; the message names the offending sample keys."""


def _names(keys: Sequence[str], idx: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(repr(str(keys[int(i)])) for i in idx[:limit])
    return shown + (f" and {len(idx) - limit} more" if len(idx) > limit else "")


def bad_embedding_rows(emb: np.ndarray) -> np.ndarray:
    """Why: rows with NaN/inf or zero norm, found chunk by chunk so memory stays bounded."""
    bad = []
    for lo in range(0, emb.shape[0], _CHUNK):
        x = np.asarray(emb[lo:lo + _CHUNK], np.float32)
        fin = np.isfinite(x).all(axis=1)
        norm = np.einsum("nd,nd->n", np.where(fin[:, None], x, 0), np.where(fin[:, None], x, 0))
        bad.append(lo + np.flatnonzero(~fin | (norm < 1e-12)))
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def validate_inputs(
    keys: Sequence[str],
    captions: Sequence[Optional[str]],
    offsets: np.ndarray,
    ids: np.ndarray,
    img_emb: np.ndarray,
    cap_emb: Optional[np.ndarray],
    concept_emb: np.ndarray,
    concept_names: Sequence[str],
    query_rows: np.ndarray,
) -> None:
    """Why: refuse, by sample key, anything that would silently corrupt neighbours or scores."""
    n = len(keys)
    if len(captions) != n:
        raise CurationInputError(f"{len(captions)} captions for {n} keys")
    if img_emb.ndim != 2 or img_emb.shape[0] != n:
        raise CurationInputError(f"image embeddings have shape {img_emb.shape}, expected ({n}, d)")
    if cap_emb is not None and cap_emb.shape != img_emb.shape:
        raise CurationInputError(f"caption embeddings have shape {cap_emb.shape}, expected {img_emb.shape}")
    if concept_emb.ndim != 2 or concept_emb.shape[1] != img_emb.shape[1]:
        raise CurationInputError(f"concept embeddings have shape {concept_emb.shape}, expected (C, {img_emb.shape[1]})")
    if len(concept_names) != concept_emb.shape[0]:
        raise CurationInputError(f"{len(concept_names)} concept names for {concept_emb.shape[0]} concept embeddings")
    if len(offsets) != n + 1 or (n and (offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(ids))):
        raise CurationInputError(f"caption concepts are not a valid CSR for {n} samples (offsets length {len(offsets)})")
    counts = pc.value_counts(keys if isinstance(keys, pa.Array) else pa.array(list(keys), pa.string()))
    dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
    if dup:
        raise CurationInputError(
            f"duplicate sample keys: {', '.join(map(repr, dup[:5]))}" + (f" and {len(dup) - 5} more" if len(dup) > 5 else ""))
    for name, emb in (("image", img_emb), ("caption", cap_emb)):
        if emb is not None:
            bad = bad_embedding_rows(emb)
            if len(bad):
                raise CurationInputError(f"NaN, infinite or zero {name} embedding for sample(s) {_names(keys, bad)}")
    badc = bad_embedding_rows(concept_emb)
    if len(badc):
        raise CurationInputError(f"NaN, infinite or zero text embedding for concept(s) {_names(concept_names, badc)}")
    if len(ids) and (ids.min() < 0 or ids.max() >= len(concept_names)):
        wrong = np.flatnonzero((ids < 0) | (ids >= len(concept_names)))
        rows = np.unique(np.searchsorted(offsets, wrong, side="right") - 1)
        raise CurationInputError(
            f"caption concept ids outside the vocabulary [0, {len(concept_names)}) for sample(s) {_names(keys, rows)}")
    if len(query_rows):
        if query_rows.min() < 0 or query_rows.max() >= n:
            raise CurationInputError(f"query rows outside [0, {n})")
        if len(np.unique(query_rows)) != len(query_rows):
            uq, cnt = np.unique(query_rows, return_counts=True)
            raise CurationInputError(f"query rows repeat sample(s) {_names(keys, uq[cnt > 1])}")
