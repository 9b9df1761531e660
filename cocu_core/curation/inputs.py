"""Shared preparation of curation inputs: the production path and the reference read, check and pick
the expansion index the same way, so the two differ only in the definitions they compute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from cocu_core.config import CurationConfig
from cocu_core.curation.errors import CurationInputError, validate_inputs
from cocu_core.curation.neighbours import exact_index
from cocu_core.curation.variants import Variant, get_variant


@dataclass(frozen=True)
class CurationInputs:
    """Why: what every curation path needs after checking: the variant, caption concepts as CSR, query rows."""

    variant: Variant
    offsets: np.ndarray
    ids: np.ndarray
    query_rows: np.ndarray
    index: Any  # faiss index searched for neighbours; None for the caption-only baseline


def prepare_inputs(
    keys: Sequence[str],
    captions: Sequence[Optional[str]],
    caption_concepts: tuple[np.ndarray, np.ndarray],
    img_emb: np.ndarray,
    cap_emb: Optional[np.ndarray],
    concept_emb: np.ndarray,
    cfg: CurationConfig,
    image_index=None,
    caption_index=None,
    *,
    concept_names: Sequence[str],
    query_rows: Optional[np.ndarray] = None,
    validate: bool = True,
) -> CurationInputs:
    """Why: one place turns user inputs into checked arrays and the index the variant's expansion searches."""
    variant = get_variant(cfg.variant)
    offsets, ids = (np.asarray(a) for a in caption_concepts)
    q_all = np.arange(len(keys), dtype=np.int64) if query_rows is None else np.asarray(query_rows, np.int64).reshape(-1)
    uses_cap = variant.expansion == "language"
    if uses_cap and cap_emb is None and caption_index is None:
        raise CurationInputError("language-driven expansion (variant v1) needs caption embeddings or a caption index")
    if validate:
        validate_inputs(keys, captions, offsets, ids, img_emb, cap_emb if uses_cap else None, concept_emb,
                        concept_names, q_all)
    index = None
    if variant.expansion == "vision":
        index = image_index if image_index is not None else exact_index(img_emb)
    elif uses_cap:
        index = caption_index if caption_index is not None else exact_index(cap_emb)
    return CurationInputs(variant, offsets, ids, q_all, index)
