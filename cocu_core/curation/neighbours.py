"""Neighbour retrieval through faiss with the query itself excluded, in batches."""

from __future__ import annotations

import numpy as np


def exact_index(emb: np.ndarray):
    """Why: an exact inner-product index when no autofaiss index is given (tests, small data)."""
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(np.ascontiguousarray(emb, dtype=np.float32))
    return index


def search_neighbours(index, queries: np.ndarray, query_rows: np.ndarray, n: int) -> np.ndarray:
    """Why: the n nearest rows per query with the query's own row removed; -1 pads when fewer exist."""
    if n <= 0:
        return np.zeros((len(query_rows), 0), np.int64)
    k = min(n + 1, index.ntotal)
    if k <= 0 or len(query_rows) == 0:
        return np.full((len(query_rows), n), -1, np.int64)
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    found = np.where(found == np.asarray(query_rows)[:, None], -1, found.astype(np.int64))
    # Stable compaction: found rows keep their order, -1 go last; keep the first n.
    order = np.argsort(found < 0, axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)[:, :n]
    if found.shape[1] < n:
        found = np.concatenate([found, np.full((len(found), n - found.shape[1]), -1, np.int64)], axis=1)
    return found
