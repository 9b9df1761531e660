"""FAISS indexes: autofaiss builds under a memory budget, tuned search parameters applied on load, recall against
exact search measured in chunks, and the checks that refuse an index built over other embeddings.

autofaiss reads the memory-mapped embeddings from disk in batches (never the whole array at once)
and picks an index that fits ``index.max_index_memory_usage`` (an IVF-PQ key at large N).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cocu_core.config import IndexConfig
from cocu_core.errors import CocuError
from cocu_core.io import atomic_path, read_json, read_manifest

INDEXES = {"image": "img_emb.npy", "caption": "text_emb.npy"}
EXACT_CHUNK = 1 << 17  # rows per block of the exact search that recall is measured against


class IndexMismatchError(ValueError, CocuError):
    """An index that does not belong to these embeddings (another encoder or corpus); the message names it."""


def build_one(x: np.ndarray | str | Path, index_path: Path, infos_path: Path,
              icfg: IndexConfig) -> tuple[Any, dict[str, Any], float]:
    """Why: one autofaiss build, written atomically (index and infos under temporary names, then renamed).

    `x` is an array or an .npy file; a file is streamed by autofaiss from a folder holding only a link to it."""
    from autofaiss import build_index

    t0 = time.time()
    src: Any = np.ascontiguousarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else None
    link_dir = index_path.parent / f".{index_path.stem}.inputs.{os.getpid()}"
    if src is None:
        shutil.rmtree(link_dir, ignore_errors=True)
        link_dir.mkdir(parents=True)
        (link_dir / "emb.npy").symlink_to(Path(x).resolve())
        src = str(link_dir)
    try:
        with atomic_path(index_path) as tmp_idx, atomic_path(infos_path) as tmp_inf:
            index, infos = _autofaiss(build_index, src, tmp_idx, tmp_inf, icfg)
            if index is None:
                raise RuntimeError(f"autofaiss built no index for {index_path.name}: the memory budget "
                                   f"(index.max_index_memory_usage {icfg.max_index_memory_usage}, "
                                   f"index.current_memory_available {icfg.current_memory_available}) is too small")
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
    return index, read_json(infos_path), time.time() - t0


def _autofaiss(build_index, src: Any, tmp_idx: Path, tmp_inf: Path, icfg: IndexConfig) -> tuple[Any, Any]:
    return build_index(
        embeddings=src,
        index_key=icfg.index_key,
        index_path=str(tmp_idx),
        index_infos_path=str(tmp_inf),
        save_on_disk=True,
        max_index_memory_usage=icfg.max_index_memory_usage,
        current_memory_available=icfg.current_memory_available,
        max_index_query_time_ms=icfg.max_index_query_time_ms,
        min_nearest_neighbors_to_retrieve=max(20, icfg.recall_k),
        metric_type=icfg.metric_type,
        verbose=logging.WARNING,
    )


def apply_params(index: Any, index_param: Optional[str]) -> Any:
    import faiss

    if index_param:
        faiss.ParameterSpace().set_index_parameters(index, index_param)
    return index


def exact_search(x: np.ndarray, q: np.ndarray, k: int, metric: str = "ip",
                 chunk: int = EXACT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Why: exact top-k by scanning `x` (possibly memory-mapped) block by block, so memory is bounded by a block.

    Returns faiss's convention: inner products descending, or squared L2 distances ascending."""
    import faiss

    q = np.ascontiguousarray(q, dtype=np.float32)
    best_d = np.full((len(q), 0), 0, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for lo in range(0, len(x), chunk):
        block = np.ascontiguousarray(x[lo:lo + chunk], dtype=np.float32)
        flat = faiss.IndexFlatIP(block.shape[1]) if metric == "ip" else faiss.IndexFlatL2(block.shape[1])
        flat.add(block)
        d, i = flat.search(q, min(k, len(block)))
        best_d = np.concatenate([best_d, d], axis=1)
        best_i = np.concatenate([best_i, i + lo], axis=1)
        order = np.argsort(-best_d if metric == "ip" else best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    return best_d, best_i


def recall_at_k(index: Any, x: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> dict[str, float]:
    """Why: measure what approximation cost: recall@k of `index` against exact search (tie-aware), plus self-retrieval."""
    q = np.ascontiguousarray(x[queries], dtype=np.float32)
    k = min(k, len(x))
    de, _ = exact_search(x, q, k, metric)
    _, ia = index.search(q, k)
    # Tie-aware recall: an approximate hit counts if its *true* score (recomputed from the vectors, not the
    # index's possibly quantised one) is as good as the exact k-th neighbour's, so duplicate vectors
    # (identical captions) returned in another order are not misses.
    xa = x[np.clip(ia, 0, None)].astype(np.float32)
    true = np.einsum("qkd,qd->qk", xa, q) if metric == "ip" else -np.sum((xa - q[:, None, :]) ** 2, axis=2)
    kth = de[:, -1:] if metric == "ip" else -de[:, -1:]
    good = (true >= kth - 1e-5) & (ia >= 0)
    recall = float(np.mean(good.sum(axis=1) / k))
    # Self-hit: the query itself comes first, or a vector identical to it (duplicate captions) ties for first.
    self_score = np.sum(q * q, axis=1) if metric == "ip" else np.zeros(len(q))
    tie = true[:, 0] >= self_score - 1e-4
    self_first = float(np.mean((ia[:, 0] == queries) | tie))
    return {f"recall@{k}": recall, "self_first": self_first}


def check_index_shape(index: Any, n: int, dim: int, what: str) -> None:
    """Why: an index over another corpus (size) or another encoder (width) would return meaningless neighbours."""
    if int(index.ntotal) != n or int(index.d) != dim:
        raise IndexMismatchError(f"{what} holds {index.ntotal} vectors of width {index.d}, but the embeddings are "
                                 f"{n} x {dim}: it was built for other embeddings; re-run the index stage")


def check_index_dir(index_dir: str | Path, embed_dir: str | Path) -> None:
    """Why: refuse indexes the index stage built over other embeddings (another encoder, another download),
    naming both encoders, before any archive is written."""
    im, em = read_manifest(index_dir), read_manifest(embed_dir)
    if not im:
        raise FileNotFoundError(f"no finished index stage in {index_dir}; run the index stage first")
    if not em:
        raise FileNotFoundError(f"no finished embed stage in {embed_dir}; run the embed stage first")
    if im.get("inputs_fingerprint") != em.get("cache_key"):
        theirs = im.get("clip_model") or "unrecorded encoder"
        raise IndexMismatchError(
            f"{Path(index_dir) / 'image.index'} was built over other embeddings ({theirs}, embed key "
            f"{im.get('inputs_fingerprint')}) than {embed_dir} ({em.get('clip_model')}, key {em.get('cache_key')}); "
            "re-run the index stage")


def load_index(out_dir: str | Path, name: str = "image", embed_dir: Optional[str | Path] = None,
               mmap: bool = True) -> Any:
    """Why: readers get the index with autofaiss's tuned search parameters (nprobe, efSearch) applied;
    with `embed_dir`, an index built over other embeddings (another encoder) is refused.

    With `mmap` the file is memory-mapped read-only (faiss IO_FLAG_MMAP_IFC): vectors, codes and graph are pages
    of the file, shared by every process on the machine and dropped by the kernel under pressure, not heap."""
    import faiss

    out = Path(out_dir)
    path = out / f"{name}.index"
    if not path.is_file():
        raise FileNotFoundError(f"no {name} index at {path}; run the index stage first")
    if embed_dir is not None:
        check_index_dir(out, embed_dir)
    infos = read_json(out / f"{name}_infos.json") if (out / f"{name}_infos.json").is_file() else {}
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise IndexMismatchError(f"{path} is not a readable faiss index ({str(exc).splitlines()[0]}); "
                                 "re-run the index stage") from None
    return apply_params(index, infos.get("index_param"))
