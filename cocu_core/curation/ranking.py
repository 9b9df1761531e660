"""Eq. 6-8 as reductions over padded tensors: naive s(x_i, c) and text-to-vision-guided r(c).

S [B, M, A]: similarities <v_member, t_c> with member 0 the query image itself; in_set [B, M, A]:
member m is in X_c ∪ {x_i} (the image itself always is); valid [B, A]: archive slot holds a concept.
Denominators (the per-concept mean and the per-image maximum) are clamped below at ``EPS``. CLIP's
image-text cosine similarities sit around 0.1-0.4, so with CLIP the clamp never binds; a weak encoder
(the toy one) has means near or below zero, where Eq. 7 would divide by noise and a concept could jump
to the top of the archive. The reference applies the same clamp; both compute similarities in float64,
since the division amplifies rounding error up to 1/EPS times.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-2  # far below CLIP similarities, far above float32 noise


def t2v_scores(S: np.ndarray, in_set: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Why: returns (naive [B, A], t2v [B, A]) in float64, NaN on empty slots."""
    S = S.astype(np.float64)
    s0 = S[:, 0, :]
    cnt = in_set.sum(axis=1)
    mean = np.where(in_set, S, 0.0).sum(axis=1) / np.maximum(cnt, 1)
    r_nb = s0 / np.maximum(mean, EPS)
    m = np.where(in_set & valid[:, None, :], S, -np.inf).max(axis=(1, 2), initial=-np.inf)  # one per image
    t2v = s0 / np.maximum(m, EPS)[:, None] + r_nb
    return np.where(valid, s0, np.nan), np.where(valid, t2v, np.nan)


def rank_order(archive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Why: per-row order by score descending, ties by concept id, empty slots last."""
    primary = np.where(archive >= 0, -score, np.inf)
    secondary = np.where(archive >= 0, archive, np.iinfo(np.int64).max)
    return np.lexsort((secondary, primary), axis=-1)
