"""Index stage: autofaiss builds the image index (and a caption index for the language-driven ablation).

Layout of ``out_dir`` (``<workdir>/index``)::

    image.index, image_infos.json       autofaiss index over embed/img_emb.npy (row i = metadata row i)
    caption.index, caption_infos.json   the same over embed/text_emb.npy
    report.json, manifest.json          index key, build time, recall@k vs exact search, self-hit rate

Search parameters autofaiss tuned (``index_param`` in the infos) are applied by :func:`load_index`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from cocu_core.config import IndexConfig, PipelineConfig
from cocu_core.io import atomic_path, read_json, read_manifest, stage_is_current, write_json_atomic, write_manifest

INDEX_FIELDS = [
    "seed",
    "index.max_index_memory_usage",
    "index.current_memory_available",
    "index.max_index_query_time_ms",
    "index.metric_type",
    "index.recall_sample",
    "index.recall_k",
]
INDEXES = {"image": "img_emb.npy", "caption": "text_emb.npy"}


def build_one(x: np.ndarray, index_path: Path, infos_path: Path, icfg: IndexConfig) -> tuple[Any, dict[str, Any], float]:
    """Why: one autofaiss build, written atomically (index and infos under temporary names, then renamed)."""
    from autofaiss import build_index

    t0 = time.time()
    with atomic_path(index_path) as tmp_idx, atomic_path(infos_path) as tmp_inf:
        index, infos = build_index(
            embeddings=np.ascontiguousarray(x, dtype=np.float32),
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
        if index is None:
            raise RuntimeError(f"autofaiss built no index for {index_path.name} ({len(x)} vectors)")
    return index, read_json(infos_path), time.time() - t0


def _apply_params(index: Any, index_param: Optional[str]) -> Any:
    import faiss

    if index_param:
        faiss.ParameterSpace().set_index_parameters(index, index_param)
    return index


def recall_at_k(index: Any, x: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> dict[str, float]:
    """Why: measure what approximation cost: recall@k of `index` against exact search (tie-aware), plus self-retrieval."""
    import faiss

    exact = faiss.IndexFlatIP(x.shape[1]) if metric == "ip" else faiss.IndexFlatL2(x.shape[1])
    exact.add(np.ascontiguousarray(x, dtype=np.float32))
    q = np.ascontiguousarray(x[queries], dtype=np.float32)
    k = min(k, len(x))
    de, _ = exact.search(q, k)
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


def build_index_stage(
    embed_dir: str | Path,
    out_dir: str | Path,
    cfg: PipelineConfig,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Why: build both indexes once per embeddings + index config; a rerun with neither changed is a cache hit."""
    emb = read_manifest(embed_dir)
    if not emb:
        raise FileNotFoundError(f"no finished embed stage in {embed_dir}; run the embed stage first")
    out = Path(out_dir)
    fields = cfg.fields_for(INDEX_FIELDS)
    if stage_is_current(out, emb["cache_key"], fields):
        return {**read_json(out / "report.json"), "cached": True}
    icfg = cfg.index
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for name, fname in INDEXES.items():
        x = np.load(Path(embed_dir) / fname)
        if len(x) == 0:
            raise RuntimeError(f"no embeddings in {Path(embed_dir) / fname}; nothing to index")
        index, infos, secs = build_one(x, out / f"{name}.index", out / f"{name}_infos.json", icfg)
        index = _apply_params(index, infos.get("index_param"))
        rng = np.random.default_rng([cfg.seed, 11])
        queries = np.sort(rng.choice(len(x), size=min(icfg.recall_sample, len(x)), replace=False))
        rec = recall_at_k(index, x, queries, icfg.recall_k, icfg.metric_type)
        report[name] = {"vectors": int(len(x)), "dim": int(x.shape[1]), "index_key": infos.get("index_key"),
                        "index_param": infos.get("index_param"), "build_seconds": round(secs, 2),
                        "recall_queries": int(len(queries)), **{k: round(v, 4) for k, v in rec.items()}}
        if log:
            log(f"index {name}: {infos.get('index_key')} over {len(x)} x {x.shape[1]} in {secs:.1f}s, "
                f"recall@{icfg.recall_k} {rec[f'recall@{min(icfg.recall_k, len(x))}']:.3f}")
    write_json_atomic(out / "report.json", report)
    write_manifest(out, "index", emb["cache_key"], fields,
                   counts={f"{n}_vectors": r["vectors"] for n, r in report.items()},
                   extra={"report": report})
    return {**report, "cached": False}


def load_index(out_dir: str | Path, name: str = "image") -> Any:
    """Why: readers get the index with autofaiss's tuned search parameters (nprobe, efSearch) applied."""
    import faiss

    out = Path(out_dir)
    path = out / f"{name}.index"
    if not path.is_file():
        raise FileNotFoundError(f"no {name} index at {path}; run the index stage first")
    infos = read_json(out / f"{name}_infos.json") if (out / f"{name}_infos.json").is_file() else {}
    return _apply_params(faiss.read_index(str(path)), infos.get("index_param"))
