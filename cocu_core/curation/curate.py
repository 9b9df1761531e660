"""Production curation: expansion, ranking and clustering for batches of images with matrix operations.

For a batch of B query images with N neighbours each, everything is a padded array: members [B, M]
(M = N + 1, the image itself first; -1 where the index returned fewer), their caption concepts
[B, M, L], the archive [B, A] (unique concept ids, -1 pads), membership [B, M, A] and similarities
S = <v_member, t_c> [B, M, A]. Eq. 6-8 are reductions over the member axis, k-means is batched over
images. Memory is bounded by the batch size. The query images of a shard are searched against the
whole dataset's index: ``query_rows`` index into the global, row-aligned arrays.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from cocu_core.config import CurationConfig
from cocu_core.curation.archive import ARCHIVE_SCHEMA
from cocu_core.curation.inputs import prepare_inputs
from cocu_core.curation.kmeans import batched_kmeans
from cocu_core.curation.neighbours import search_neighbours
from cocu_core.curation.ranking import rank_order, t2v_scores

CSR = tuple[np.ndarray, np.ndarray]


def gather_concepts(offsets: np.ndarray, ids: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Why: padded [..., L] caption concept ids of each member (-1 pads, all -1 for missing members)."""
    safe = np.clip(members, 0, None)
    start = offsets[safe]
    lens = np.where(members >= 0, offsets[safe + 1] - start, 0)
    L = max(int(lens.max()) if lens.size else 0, 1)
    pos = np.arange(L)
    ok = pos < lens[..., None]
    if len(ids) == 0:
        return np.full(ok.shape, -1, np.int64)
    vals = ids[np.where(ok, start[..., None] + pos, 0)]
    return np.where(ok, vals, -1).astype(np.int64)


def unique_rows(x: np.ndarray) -> np.ndarray:
    """Why: per-row sorted unique non-negative ids without a Python loop; [B, A] with -1 pads."""
    big = np.iinfo(np.int64).max
    s = np.sort(np.where(x < 0, big, x), axis=1)
    keep = s != big
    keep[:, 1:] &= s[:, 1:] != s[:, :-1]
    counts = keep.sum(axis=1)
    A = int(counts.max()) if counts.size else 0
    out = np.full((x.shape[0], A), -1, np.int64)
    rows, cols = np.nonzero(keep)
    slot = np.cumsum(keep, axis=1)[rows, cols] - 1
    out[rows, slot] = s[rows, cols]
    return out


def _list_column(values: np.ndarray, valid: np.ndarray, typ: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(valid) + 1, np.int32)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[valid], type=typ))


def _list_take(ids: np.ndarray, valid: np.ndarray, names: pa.Array) -> pa.Array:
    offsets = np.zeros(len(valid) + 1, np.int32)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(ids[valid], pa.int64())))


def member_similarities(img_emb: np.ndarray, T64: np.ndarray, members: np.ndarray, archive: np.ndarray,
                        chunk: int = 512) -> np.ndarray:
    """Why: S[b, m, a] = <v_member, t_c> in float64 like the reference (Eq. 7 divides by small means, which
    amplifies rounding), gathered in chunks of rows so the float64 temporaries stay small."""
    B, M = members.shape
    S = np.empty((B, M, archive.shape[1]), np.float64)
    for lo in range(0, B, chunk):
        V = np.asarray(img_emb[np.clip(members[lo:lo + chunk], 0, None)], np.float64)  # [b, M, d]
        S[lo:lo + chunk] = np.matmul(V, T64[np.clip(archive[lo:lo + chunk], 0, None)].transpose(0, 2, 1))
    return S


def curate_batches(
    keys: Sequence[str],
    captions: Sequence[Optional[str]],
    caption_concepts: CSR,
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
) -> Iterator[pa.RecordBatch]:
    """Why: one archive record batch per ``cfg.batch_size`` queries, so memory is bounded by the batch."""
    inp = prepare_inputs(keys, captions, caption_concepts, img_emb, cap_emb, concept_emb, cfg, image_index,
                         caption_index, concept_names=concept_names, query_rows=query_rows, validate=validate)
    variant, offsets, ids, q_all, index = inp.variant, inp.offsets, inp.ids, inp.query_rows, inp.index
    names = pa.array(list(concept_names), pa.string())
    key_arr = keys if isinstance(keys, pa.Array) else pa.array(list(keys), pa.string())
    cap_arr = pa.array(list(captions), pa.string()).fill_null("")
    T = np.asarray(concept_emb, np.float32)
    T64 = T.astype(np.float64)
    N = cfg.n_neighbours if index is not None else 0
    for lo in range(0, len(q_all), cfg.batch_size):
        q = q_all[lo:lo + cfg.batch_size]
        B = len(q)
        qv = np.asarray(img_emb[q], np.float32)
        nb = search_neighbours(index, qv, q, N) if N else np.zeros((B, 0), np.int64)
        members = np.concatenate([q[:, None], nb], axis=1)  # [B, M]
        mc = gather_concepts(offsets, ids, members)  # [B, M, L]
        archive = unique_rows(mc.reshape(B, -1))  # [B, A], sorted ids
        valid = archive >= 0
        contains = (mc[:, :, :, None] == archive[:, None, None, :]).any(axis=2)  # [B, M, A]
        contains[:, 0, :] = True  # X_c ∪ {x_i}
        in_set = contains & valid[:, None, :] & (members >= 0)[:, :, None]
        S = member_similarities(img_emb, T64, members, archive)  # [B, M, A]
        naive, t2v = t2v_scores(S, in_set, valid)
        order = rank_order(archive, t2v if variant.ranking == "t2v" else naive)
        archive = np.take_along_axis(archive, order, axis=1)
        naive = np.take_along_axis(naive, order, axis=1)
        t2v = np.take_along_axis(t2v, order, axis=1)
        valid = archive >= 0  # still the leading slots of each row
        if variant.sampling == "cluster":
            labels = batched_kmeans(T[np.clip(archive, 0, None)], valid, q, cfg.kmeans_iters, cfg.kmeans_restarts,
                                    cfg.seed, cfg.kmeans_threads)
            clusters = _list_column(labels.astype(np.int16), valid, pa.int16())
        else:
            clusters = pa.nulls(B, ARCHIVE_SCHEMA.field("cluster_ids").type)
        own = mc[:, 0, :]
        qa = pa.array(q)
        yield pa.RecordBatch.from_arrays(
            [
                key_arr.take(qa),
                cap_arr.take(qa),
                _list_column(own.astype(np.int32), own >= 0, pa.int32()),
                _list_column(archive.astype(np.int32), valid, pa.int32()),
                _list_take(archive, valid, names),
                _list_column(naive.astype(np.float32), valid, pa.float32()),
                _list_column(t2v.astype(np.float32), valid, pa.float32()),
                clusters,
                _list_take(nb, nb >= 0, key_arr),
            ],
            schema=ARCHIVE_SCHEMA,
        )


def curate(
    keys: Sequence[str],
    captions: Sequence[Optional[str]],
    caption_concepts: CSR,
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
) -> pa.Table:
    """Why: one shard's archive table (its query rows searched against the whole dataset)."""
    batches = list(curate_batches(keys, captions, caption_concepts, img_emb, cap_emb, concept_emb, cfg,
                                  image_index, caption_index, concept_names=concept_names,
                                  query_rows=query_rows, validate=validate))
    return pa.Table.from_batches(batches, schema=ARCHIVE_SCHEMA)
