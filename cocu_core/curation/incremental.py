"""Incremental re-curation: which archive rows a grown corpus can change, and the others carried over.

An image's archive row is a function of its own row, its N retrieved neighbours, their captions' concepts and those
concepts' embeddings (Eq. 6-8 read nothing else; the k-means is seeded by the image's row). So after new pairs arrive
(appended rows; earlier rows keep their row numbers), an earlier row is recomputed only when
  - a new image joins its N nearest: some new image is at least as similar as its current N-th neighbour (exact
    indexes: checked against every earlier image; approximate ones: among each new image's `reverse_k` nearest);
  - a member's (its own or a neighbour's) caption has other concepts under today's vocabulary;
  - a concept of its archive was dropped from the vocabulary or embeds differently;
  - two equal-scored concepts of it swap order under today's concept ids (the ranking's tie order);
and every other row is the earlier row with its concept ids renumbered to today's vocabulary.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SIM_TOL = 1e-5  # similarities this close to the N-th neighbour's count as reaching it (recomputing is always safe)
BLOCK = 2048  # new images per block of the exact comparison against every earlier image


def list_offsets(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Why: a list column as (offsets, flat values) numpy arrays, nulls as empty lists."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    arr = pc.fill_null(arr, pa.scalar([], arr.type)) if arr.null_count else arr
    offsets = np.asarray(arr.offsets, np.int64)
    values = arr.values.slice(offsets[0], offsets[-1] - offsets[0])
    return offsets - offsets[0], values


def padded(offsets: np.ndarray, flat: np.ndarray, width: Optional[int] = None, fill: Any = -1) -> np.ndarray:
    """Why: a ragged list column as one [rows, width] array (`fill` pads), for row-wise vectorised checks."""
    lens = np.diff(offsets)
    w = int(lens.max()) if width is None and len(lens) else (width or 0)
    out = np.full((len(lens), max(w, 1)), fill, dtype=np.asarray(flat).dtype if len(flat) else np.int64)
    if len(flat):
        rows = np.repeat(np.arange(len(lens)), lens)
        cols = np.arange(len(flat)) - np.repeat(offsets[:-1], lens)
        out[rows, cols] = flat
    return out[:, :w] if w else out[:, :0]


def neighbour_rows(neighbour_keys: pa.ChunkedArray | pa.Array, key_array: pa.Array, n: int) -> np.ndarray:
    """Why: each archive row's stored neighbours as today's row numbers, [rows, n], -1 pads (or a key gone)."""
    offsets, flat = list_offsets(neighbour_keys)
    found = pc.index_in(flat, value_set=key_array).to_numpy(zero_copy_only=False)
    found = np.where(np.isnan(found.astype(np.float64)), -1, found).astype(np.int64) if len(found) else \
        np.zeros(0, np.int64)
    return padded(offsets, found, n)


def nth_similarity(img_emb: np.ndarray, rows: np.ndarray, nb: np.ndarray, n: int) -> np.ndarray:
    """Why: the similarity a new image must reach to join a row's N nearest: its weakest stored neighbour's, or -inf
    when fewer than N were found (any new image joins)."""
    sims = np.empty(nb.shape, np.float32)
    for lo in range(0, len(rows), 8192):  # [rows, n, d] temporaries a chunk at a time
        v = np.asarray(img_emb[rows[lo:lo + 8192]], np.float32)
        part = nb[lo:lo + 8192]
        u = np.asarray(img_emb[np.clip(part, 0, None).ravel()], np.float32).reshape(part.shape + (-1,))
        sims[lo:lo + 8192] = np.einsum("rd,rnd->rn", v, u)
    sims = np.where(nb >= 0, sims, np.inf)
    full = (nb >= 0).sum(axis=1) >= n
    return np.where(full, sims.min(axis=1) if nb.shape[1] else -np.inf, -np.inf).astype(np.float32)


def joined_by_new(img_emb: np.ndarray, thr: np.ndarray, old_rows: np.ndarray, new_rows: np.ndarray,
                  index: Any = None, reverse_k: int = 32) -> np.ndarray:
    """Why: which earlier rows (`old_rows`, their thresholds `thr`) some new image would now be among the N nearest
    of. `index` None: exact, every new image against every earlier one in blocks; else the new images' `reverse_k`
    nearest from the index, their similarities recomputed exactly."""
    hit = np.zeros(len(old_rows), bool)
    if not len(new_rows) or not len(old_rows):
        return hit
    pos = np.full(int(max(old_rows.max(), new_rows.max())) + 1, -1, np.int64)
    pos[old_rows] = np.arange(len(old_rows))
    for lo in range(0, len(new_rows), BLOCK):
        nr = new_rows[lo:lo + BLOCK]
        q = np.asarray(img_emb[nr], np.float32)
        if index is None:
            for a in range(0, len(old_rows), 1 << 16):
                cols = old_rows[a:a + (1 << 16)]
                s = q @ np.asarray(img_emb[cols], np.float32).T
                hit[a:a + len(cols)] |= (s >= thr[a:a + len(cols)] - SIM_TOL).any(axis=0)
            continue
        _, found = index.search(np.ascontiguousarray(q), min(reverse_k, int(index.ntotal)))
        found = found.astype(np.int64)
        ok = (found >= 0) & (found < len(pos))
        p = np.where(ok, pos[np.clip(found, 0, len(pos) - 1)], -1)
        r, c = np.nonzero(p >= 0)
        if not len(r):
            continue
        j = p[r, c]
        s = np.einsum("rd,rd->r", q[r], np.asarray(img_emb[old_rows[j]], np.float32))
        hit[j[s >= thr[j] - SIM_TOL]] = True
    return hit


def id_mapping(concept_ids: pa.ChunkedArray, concepts: pa.ChunkedArray, names: Sequence[str]) -> np.ndarray:
    """Why: earlier concept id -> today's id (-1: no longer in the vocabulary), read from the archive's own aligned
    (id, name) lists, so the earlier vocabulary file is not needed."""
    _, ids = list_offsets(concept_ids)
    _, nm = list_offsets(concepts)
    ids = ids.to_numpy(zero_copy_only=False).astype(np.int64)
    if not len(ids):
        return np.full(0, -1, np.int64)
    uniq, first = np.unique(ids, return_index=True)
    today = pc.index_in(nm.take(pa.array(first)), value_set=pa.array(list(names), pa.string()))
    today = today.to_numpy(zero_copy_only=False)
    out = np.full(int(uniq.max()) + 1, -1, np.int64)
    out[uniq] = np.where(np.isnan(today.astype(np.float64)), -1, today).astype(np.int64)
    return out


def concepts_changed(old_map: np.ndarray, old_emb: Optional[np.ndarray], new_emb: np.ndarray) -> np.ndarray:
    """Why: per earlier id: dropped from the vocabulary, or its text embedding is not the same bytes (another
    encoder or templates); no earlier embeddings on record counts every concept as changed."""
    changed = old_map < 0
    if old_emb is None:
        return np.ones_like(changed)
    ok = np.flatnonzero(~changed & (np.arange(len(old_map)) < len(old_emb)))
    same = (np.asarray(old_emb[ok]) == np.asarray(new_emb[old_map[ok]])).all(axis=1)
    changed[ok[~same]] = True
    changed[np.arange(len(old_map)) >= len(old_emb)] = True
    return changed


def remap(flat_old: np.ndarray, old_map: np.ndarray) -> np.ndarray:
    """Why: earlier ids -> today's, -1 for an id the mapping does not hold."""
    ok = (flat_old >= 0) & (flat_old < len(old_map))
    return np.where(ok, old_map[np.clip(flat_old, 0, max(len(old_map) - 1, 0))], -1)


def csr_take(offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Why: the CSR lists of `rows` as their own (offsets, flat ids), gathered without a per-row loop."""
    lens = offsets[rows + 1] - offsets[rows]
    out_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    pos = np.repeat(offsets[rows] - out_off[:-1], lens) + np.arange(out_off[-1])
    return out_off, np.asarray(ids, np.int64)[pos] if len(pos) else np.zeros(0, np.int64)


def caption_changed(old_caption_ids: pa.ChunkedArray, old_map: np.ndarray, offsets: np.ndarray, ids: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """Why: rows whose caption has another concept set today than when curated (vocabulary additions or drops)."""
    o_off, o_flat = list_offsets(old_caption_ids)
    o_vals = remap(o_flat.to_numpy(zero_copy_only=False).astype(np.int64), old_map)
    dropped = np.zeros(len(o_off) - 1, bool)
    dropped[np.repeat(np.arange(len(o_off) - 1), np.diff(o_off))[o_vals < 0]] = True
    old = padded(o_off, o_vals)
    new = padded(*csr_take(offsets, ids, rows))
    w = max(old.shape[1], new.shape[1], 1)
    big = np.iinfo(np.int64).max
    old = np.sort(np.pad(np.where(old < 0, big, old), ((0, 0), (0, w - old.shape[1])), constant_values=big), axis=1)
    new = np.sort(np.pad(np.where(new < 0, big, new), ((0, 0), (0, w - new.shape[1])), constant_values=big), axis=1)
    return (old != new).any(axis=1) | dropped


def ties_reordered(concept_ids: pa.ChunkedArray, scores: pa.ChunkedArray, old_map: np.ndarray) -> np.ndarray:
    """Why: rows with two adjacent equal scores whose concepts' id order (the ranking's tie-break) flips today."""
    off, flat = list_offsets(concept_ids)
    _, sc = list_offsets(scores)
    old = flat.to_numpy(zero_copy_only=False).astype(np.int64)
    s = sc.to_numpy(zero_copy_only=False)
    new = remap(old, old_map)
    out = np.zeros(len(off) - 1, bool)
    if len(old) < 2:
        return out
    same_row = np.ones(len(old) - 1, bool)
    same_row[off[1:-1] - 1] = False  # the last of a row and the first of the next
    flip = same_row & (s[1:] == s[:-1]) & ((old[1:] > old[:-1]) != (new[1:] > new[:-1]))
    rows = np.searchsorted(off, np.flatnonzero(flip), side="right") - 1
    out[rows] = True
    return out


def caption_ids_column(offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> pa.Array:
    """Why: today's caption concept ids of `rows` (what a recomputed row would hold), as the archive's list column."""
    off, flat = csr_take(offsets, ids, rows)
    return pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(flat.astype(np.int32), pa.int32()))


def carried(table: pa.Table, keep: np.ndarray, old_map: np.ndarray, offsets: np.ndarray, ids: np.ndarray,
            rows: np.ndarray) -> pa.Table:
    """Why: the rows kept from an earlier archive (`keep` positions; `rows` their row numbers) with concept ids in
    today's vocabulary; scores, clusters and neighbours unchanged."""
    t = table.take(pa.array(keep, pa.int64()))
    off, flat = list_offsets(t.column("concept_ids"))
    new = remap(flat.to_numpy(zero_copy_only=False).astype(np.int64), old_map).astype(np.int32)
    t = t.set_column(t.schema.get_field_index("concept_ids"), t.schema.field("concept_ids"),
                     pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(new, pa.int32())))
    i = t.schema.get_field_index("caption_concept_ids")
    return t.set_column(i, t.schema.field(i), caption_ids_column(offsets, ids, rows))
