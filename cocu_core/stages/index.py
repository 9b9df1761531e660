"""index: the image index (and a caption index for the language-driven ablation), built with faiss directly by the
size/memory policy and tuned to `index.target_recall`.

Reads   embed/img_emb.npy, embed/text_emb.npy, embed/manifest.json (its cache key and shard row ranges)
Writes  index/ (layout below)
Key     embed's cache key + FIELDS

Layout of ``out_dir`` (``<workdir>/index``)::

    image.index, image_infos.json       faiss index over embed/img_emb.npy (row i = metadata row i); infos: key,
                                        tuned search parameter, re-rank factor and the embeddings it re-ranks from
    caption.index, caption_infos.json   the same over embed/text_emb.npy
    report.json, manifest.json          key, bytes, build time, reached recall@k (held-out half), tuning trace

Policy (`cocu_core/index/policy.py`): exact search (Flat) below `index.exact_below` vectors; above, IVF with about
`list_size` vectors a list (an HNSW32 coarse quantiser from `hnsw_quantizer_from` lists) and Flat, SQ8 or PQ codes,
the most accurate that fit `max_index_memory_usage`; lossy codes are re-ranked exactly from the memory-mapped
embeddings. The coarse quantiser trains on random rows across all shards. nprobe/efSearch is the smallest reaching
`target_recall` (recall@k as curation uses it: the query itself dropped) on half the held-out queries, reported on
the other half; unreachable within `max_index_query_time_ms` stops the stage (`accept_lower_recall` warns instead).
The manifest records which embeddings (and encoder) the indexes were built over, so curation refuses another's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from cocu_core.config import PipelineConfig
from cocu_core.embeddings.store import npy_header, open_npy, shard_row_ranges
from cocu_core.index.build import INDEXES, RerankIndex, build_index, write_index
from cocu_core.index.policy import plan_index
from cocu_core.index.tune import tune
from cocu_core.io import read_json, read_manifest, stage_is_current, write_json_atomic, write_manifest
from cocu_core.layout import stage_dir
from cocu_core.stages.base import Context, Report, Stage, StageStatus, compare

FIELDS = [
    "seed",
    "index.max_index_memory_usage",
    "index.current_memory_available",
    "index.max_index_query_time_ms",
    "index.index_key",
    "index.metric_type",
    "index.recall_sample",
    "index.recall_k",
    "index.target_recall",
    "index.accept_lower_recall",
    "index.exact_below",
    "index.list_size",
    "index.hnsw_quantizer_from",
    "index.train_per_list",
    "index.train_iters",
    "index.rerank",
    "index.rerank_factor",
    "index.hnsw_ef_construction",
]


def shards_covered(sample: Optional[np.ndarray], ranges: Mapping[str, tuple[int, int]]) -> Optional[dict[str, int]]:
    """Why: evidence that the training sample saw every source: shards with at least one training row, of all."""
    if sample is None or not ranges:
        return None
    bounds = sorted(ranges.values())
    hit = sum(int(np.searchsorted(sample, a) < np.searchsorted(sample, b)) for a, b in bounds)
    return {"train_shards": hit, "shards": len(bounds)}


def build_tuned(f: Path, out: Path, name: str, cfg: PipelineConfig, ranges: Mapping[str, tuple[int, int]],
                log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Why: one index: plan, build, tune, write (index then infos, each atomically); returns its report row."""
    icfg = cfg.index
    x = open_npy(f)
    n, d = x.shape
    plan = plan_index(n, d, icfg)
    if log:
        log(f"index {name}: {plan.key} over {n:,} x {d}" + (" with exact re-rank" if plan.rerank else ""))
    t0 = time.time()
    index, info = build_index(x, plan, icfg, [cfg.seed, 13, len(name)], log, name)
    build_s = time.time() - t0
    searched = RerankIndex(index, x, icfg.rerank_factor, icfg.metric_type) if plan.rerank else index
    t1 = time.time()
    tuned = tune(searched, plan, x, icfg, [cfg.seed, 11], name, log)
    cover = shards_covered(info.pop("_train_sample", None), ranges)
    index_bytes = write_index(index, out / f"{name}.index")
    infos = {"index_key": plan.key, "index_param": tuned["index_param"], "metric_type": icfg.metric_type,
             "rerank_factor": icfg.rerank_factor if plan.rerank else 0,
             "embeddings": os.path.relpath(f.resolve(), out.resolve()), "nlist": plan.nlist, "codes": plan.codes}
    write_json_atomic(out / f"{name}_infos.json", infos)
    k = max(1, min(icfg.recall_k, n - 1))
    row = {"vectors": int(n), "dim": int(d), "index_key": plan.key, "index_param": tuned["index_param"],
           "rerank_factor": infos["rerank_factor"], "build_seconds": round(build_s, 2),
           "recall_seconds": round(time.time() - t1, 2), "index_bytes": index_bytes, **info,
           **({} if cover is None else cover), **tuned}
    if log:
        log(f"index {name}: {plan.key} ({tuned['index_param']}) built in {build_s:.1f}s, {index_bytes / 2**20:.0f} MiB, "
            f"recall@{k} {tuned[f'recall@{k}']:.3f} on held-out queries (target {icfg.target_recall:g})")
    return row


def index_stage(
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
    fields = cfg.fields_for(FIELDS)
    if stage_is_current(out, emb["cache_key"], fields):
        return {**read_json(out / "report.json"), "cached": True}
    files = {name: Path(embed_dir) / fname for name, fname in INDEXES.items()}
    for name, f in files.items():  # both inputs checked (truncation, emptiness) before anything is built
        shape, _ = npy_header(f)
        if shape[0] == 0:
            raise RuntimeError(f"no embeddings in {f}; nothing to index")
    try:
        ranges = shard_row_ranges(embed_dir)
    except (OSError, ValueError, KeyError):  # no shard layout recorded: coverage is not reported
        ranges = {}
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    report = {name: build_tuned(f, out, name, cfg, ranges, log) for name, f in files.items()}
    write_json_atomic(out / "report.json", report)
    write_manifest(out, "index", emb["cache_key"], fields,
                   counts={f"{n}_vectors": r["vectors"] for n, r in report.items()},
                   extra={"report": {n: {k: v for k, v in r.items() if k != "tuning"} for n, r in report.items()},
                          "clip_model": emb.get("clip_model")})
    return {**report, "cached": False}


def run(ctx: Context) -> Report:
    """Why: both indexes over the finished embeddings."""
    return index_stage(ctx.dir("embed"), ctx.dir("index"), ctx.cfg, log=ctx.log)


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: current when built over the embeddings the embed stage should have, with today's fields."""
    return compare("index", stage_dir(cfg, "index"), up["embed"].key, cfg.fields_for(FIELDS), {"embed": up["embed"]})


STAGE = Stage("index", needs=("embed",), run=run, status=status, fields=tuple(FIELDS))
