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
The manifest records which embeddings (and encoder) the indexes were built over, so curation refuses another's, and
their shard rows: when the embeddings grew by new shards only, the new vectors are added to the earlier index
(`cocu_core/index/grow.py`; quantiser and codes kept, search parameter re-tuned) unless `index.retrain_growth`, a policy
change or a recall miss calls for a rebuild; the report says which (`grown_from`, `trained_vectors`, `rebuilt_because`).
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
from cocu_core.index.grow import can_grow, grow_index, growth_base, plan_from_infos
from cocu_core.index.policy import plan_index
from cocu_core.index.tune import IndexRecallError, tune
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
    "index.grow",
    "index.retrain_growth",
]


def shards_covered(sample: Optional[np.ndarray], ranges: Mapping[str, tuple[int, int]]) -> Optional[dict[str, int]]:
    """Why: evidence that the training sample saw every source: shards with at least one training row, of all."""
    if sample is None or not ranges:
        return None
    bounds = sorted(ranges.values())
    hit = sum(int(np.searchsorted(sample, a) < np.searchsorted(sample, b)) for a, b in bounds)
    return {"train_shards": hit, "shards": len(bounds)}


def _tuned(index: Any, plan: Any, x: np.ndarray, cfg: PipelineConfig, name: str,
           log: Optional[Callable[[str], None]]) -> tuple[dict[str, Any], float]:
    """Why: an index's search setting tuned to the recall target (re-ranked when its plan says so), and the seconds."""
    icfg = cfg.index
    searched = RerankIndex(index, x, icfg.rerank_factor, icfg.metric_type) if plan.rerank else index
    t0 = time.time()
    return tune(searched, plan, x, icfg, [cfg.seed, 11], name, log), time.time() - t0


def _grown(out: Path, name: str, x: np.ndarray, plan: Any, cfg: PipelineConfig, grow_from: Optional[int],
           prev_row: Optional[Mapping[str, Any]], log: Optional[Callable[[str], None]]) -> tuple[Optional[tuple], str]:
    """Why: the earlier index with the rows after `grow_from` added, re-tuned; or None and why it is rebuilt instead
    ('' when there is nothing to grow from)."""
    infos = out / f"{name}_infos.json"
    if grow_from is None or prev_row is None or not infos.is_file():
        return None, ""
    prev_plan = plan_from_infos(read_json(infos))
    why = can_grow(prev_row, prev_plan, plan, x.shape[0], cfg.index)
    if why:
        return None, why
    t0 = time.time()
    index = grow_index(out / f"{name}.index", x, grow_from)
    add_s = time.time() - t0
    try:
        tuned, recall_s = _tuned(index, prev_plan, x, cfg, name, log)
    except IndexRecallError as e:
        return None, f"grown, it misses the recall target ({e})"
    if not tuned["target_met"]:
        return None, "grown, it misses the recall target"
    info = {"train_rows": 0, "add_seconds": round(add_s, 2), "grown_from": int(grow_from),
            "added": int(x.shape[0] - grow_from),
            "trained_vectors": int(prev_row.get("trained_vectors") or prev_row["vectors"])}
    return (index, info, prev_plan, tuned, add_s, recall_s), ""


def build_tuned(f: Path, out: Path, name: str, cfg: PipelineConfig, ranges: Mapping[str, tuple[int, int]],
                log: Optional[Callable[[str], None]] = None, grow_from: Optional[int] = None,
                prev_row: Optional[Mapping[str, Any]] = None, why_build: str = "") -> dict[str, Any]:
    """Why: one index: grown from the earlier one when allowed (`grow_from` rows unchanged), else planned and built;
    tuned, written (index then infos, each atomically); returns its report row."""
    icfg = cfg.index
    x = open_npy(f)
    n, d = x.shape
    plan = plan_index(n, d, icfg)
    grown, why = _grown(out, name, x, plan, cfg, grow_from, prev_row, log)
    why_build = why or why_build
    if grown is not None:
        index, info, plan, tuned, build_s, recall_s = grown
        if log:
            log(f"index {name}: {n - grow_from:,} new vectors added to the earlier {plan.key} over {grow_from:,} "
                "(its coarse quantiser kept)")
    else:
        if log:
            log(f"index {name}: {plan.key} over {n:,} x {d}" + (" with exact re-rank" if plan.rerank else "")
                + (f" (rebuilt: {why_build})" if why_build else ""))
        t0 = time.time()
        index, info = build_index(x, plan, icfg, [cfg.seed, 13, len(name)], log, name)
        build_s = time.time() - t0
        tuned, recall_s = _tuned(index, plan, x, cfg, name, log)
        info.update(grown_from=None, added=0, trained_vectors=int(n), rebuilt_because=why_build or None)
    cover = shards_covered(info.pop("_train_sample", None), ranges)
    index_bytes = write_index(index, out / f"{name}.index")
    infos = {"index_key": plan.key, "index_param": tuned["index_param"], "metric_type": icfg.metric_type,
             "rerank_factor": icfg.rerank_factor if plan.rerank else 0,
             "embeddings": os.path.relpath(f.resolve(), out.resolve()), "nlist": plan.nlist, "codes": plan.codes,
             "param": plan.param, "bytes_per_vector": plan.bytes_per_vector}
    write_json_atomic(out / f"{name}_infos.json", infos)
    k = max(1, min(icfg.recall_k, n - 1))
    row = {"vectors": int(n), "dim": int(d), "index_key": plan.key, "index_param": tuned["index_param"],
           "rerank_factor": infos["rerank_factor"], "build_seconds": round(build_s, 2),
           "recall_seconds": round(recall_s, 2), "index_bytes": index_bytes, **info,
           **({} if cover is None else cover), **tuned}
    if log:
        log(f"index {name}: {plan.key} ({tuned['index_param']}) {'grown' if grown else 'built'} in {build_s:.1f}s, "
            f"{index_bytes / 2**20:.0f} MiB, recall@{k} {tuned[f'recall@{k}']:.3f} on held-out queries "
            f"(target {icfg.target_recall:g})")
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
    prev = read_manifest(out)
    prev_report = read_json(out / "report.json") if prev and (out / "report.json").is_file() else {}
    n_rows = npy_header(files["image"])[0][0]
    grow_from, why = growth_base(prev, fields, emb, ranges, n_rows, cfg.index)
    (out / "manifest.json").unlink(missing_ok=True)
    report = {name: build_tuned(f, out, name, cfg, ranges, log, grow_from, prev_report.get(name), why)
              for name, f in files.items()}
    write_json_atomic(out / "report.json", report)
    write_manifest(out, "index", emb["cache_key"], fields,
                   counts={f"{n}_vectors": r["vectors"] for n, r in report.items()},
                   extra={"report": {n: {k: v for k, v in r.items() if k != "tuning"} for n, r in report.items()},
                          "clip_model": emb.get("clip_model"), "part_key": emb.get("part_key"),
                          "shard_rows": {s: list(r) for s, r in ranges.items()}})
    return {**report, "cached": False}


def run(ctx: Context) -> Report:
    """Why: both indexes over the finished embeddings."""
    return index_stage(ctx.dir("embed"), ctx.dir("index"), ctx.cfg, log=ctx.log)


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: current when built over the embeddings the embed stage should have, with today's fields."""
    return compare("index", stage_dir(cfg, "index"), up["embed"].key, cfg.fields_for(FIELDS), {"embed": up["embed"]})


STAGE = Stage("index", needs=("embed",), run=run, status=status, fields=tuple(FIELDS))
