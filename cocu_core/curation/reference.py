"""The literal per-image reference: the definitions as plain loops, kept as the test oracle and the
benchmark baseline. Slow on purpose: Python sets and loops, one faiss query per image, float64 dot
products one at a time, scikit-learn KMeans per image (Lloyd from the shared farthest-point init).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from cocu_core.config import CurationConfig
from cocu_core.curation.archive import ARCHIVE_SCHEMA
from cocu_core.curation.inputs import prepare_inputs
from cocu_core.curation.kmeans import STRIDE, canonical_labels, first_near_min, kmeanspp_init, uniforms
from cocu_core.curation.ranking import EPS


def _sklearn_kmeans(points: np.ndarray, k: int, row: int, cfg: CurationConfig) -> np.ndarray:
    """Why: scikit-learn's Lloyd from each shared k-means++ seeding; the lowest inertia wins."""
    import warnings

    from sklearn.cluster import KMeans

    u = uniforms(cfg.seed, np.array([row]), cfg.kmeans_restarts, 1 + (k - 1) * STRIDE)[0]
    labels, inertias = [], []
    for r in range(cfg.kmeans_restarts):
        init = points[kmeanspp_init(points, k, u[r])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=cfg.kmeans_iters, tol=0.0,
                        algorithm="lloyd").fit(points)
        labels.append(km.labels_)
        inertias.append(km.inertia_)
    return labels[int(first_near_min(np.asarray(inertias)))]


def reference_curate(
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
) -> pa.Table:
    """Why: the paper's definitions image by image, to check the production path against."""
    inp = prepare_inputs(keys, captions, caption_concepts, img_emb, cap_emb, concept_emb, cfg, image_index,
                         caption_index, concept_names=concept_names, query_rows=query_rows)
    variant, offsets, ids, index = inp.variant, inp.offsets, inp.ids, inp.index

    def concepts_of(row: int) -> list[int]:
        return [int(c) for c in ids[offsets[row]:offsets[row + 1]]]

    def s(row: int, c: int) -> float:
        return float(np.dot(np.asarray(img_emb[row], np.float64), np.asarray(concept_emb[c], np.float64)))

    rows = []
    for i in inp.query_rows:
        i = int(i)
        nb: list[int] = []
        if index is not None:
            _, found = index.search(np.asarray(img_emb[i:i + 1], np.float32), min(cfg.n_neighbours + 1, index.ntotal))
            nb = [int(x) for x in found[0] if x >= 0 and x != i][: cfg.n_neighbours]
        archive: set[int] = set(concepts_of(i))
        for x in nb:
            archive |= set(concepts_of(x))
        archive_list = sorted(archive)
        X = {c: [x for x in nb if c in set(concepts_of(x))] for c in archive_list}  # exact id membership
        naive = {c: s(i, c) for c in archive_list}
        M = max((s(x, c) for c in archive_list for x in X[c] + [i]), default=1.0)
        t2v = {}
        for c in archive_list:
            group = X[c] + [i]
            mean = sum(s(x, c) for x in group) / len(group)
            t2v[c] = s(i, c) / max(M, EPS) + s(i, c) / max(mean, EPS)
        score = t2v if variant.ranking == "t2v" else naive
        ranked = sorted(archive_list, key=lambda c: (-score[c], c))
        clusters = None
        if variant.sampling == "cluster":
            if len(ranked) > 2:
                pts = np.asarray(concept_emb, np.float64)[ranked]
                labels = _sklearn_kmeans(pts, math.ceil(len(ranked) / 2), i, cfg)
                clusters = [int(x) for x in canonical_labels(labels)]
            else:
                clusters = list(range(len(ranked)))
        rows.append({
            "key": str(keys[i]),
            "caption": captions[i] or "",
            "caption_concept_ids": concepts_of(i),
            "concept_ids": ranked,
            "concepts": [concept_names[c] for c in ranked],
            "naive_scores": [naive[c] for c in ranked],
            "t2v_scores": [t2v[c] for c in ranked],
            "cluster_ids": clusters,
            "neighbour_keys": [str(keys[x]) for x in nb],
        })
    return pa.Table.from_pylist(rows, schema=ARCHIVE_SCHEMA)
