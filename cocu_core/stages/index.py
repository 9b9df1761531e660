"""index: autofaiss builds the image index (and a caption index for the language-driven ablation).

Reads   embed/img_emb.npy, embed/text_emb.npy, embed/manifest.json (its cache key)
Writes  index/ (layout below)
Key     embed's cache key + FIELDS

Layout of ``out_dir`` (``<workdir>/index``)::

    image.index, image_infos.json       autofaiss index over embed/img_emb.npy (row i = metadata row i)
    caption.index, caption_infos.json   the same over embed/text_emb.npy
    report.json, manifest.json          index key, build time, recall@k vs exact search, self-hit rate

Search parameters autofaiss tuned (``index_param`` in the infos) are applied by :func:`load_index`.
autofaiss reads the memory-mapped embeddings from disk in batches (never the whole array at once)
and picks an index that fits ``index.max_index_memory_usage`` (an IVF-PQ key at large N); recall
against exact search is measured by scanning the vectors in chunks. The manifest records which
embeddings (and encoder) the indexes were built over, so curation refuses an index of another encoder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from cocu_core.config import PipelineConfig
from cocu_core.embeddings.store import npy_header, open_npy
from cocu_core.index.build import INDEXES, apply_params, build_one, recall_at_k
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
]


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
    icfg = cfg.index
    files = {name: Path(embed_dir) / fname for name, fname in INDEXES.items()}
    for name, f in files.items():  # both inputs checked (truncation, emptiness) before anything is built
        shape, _ = npy_header(f)
        if shape[0] == 0:
            raise RuntimeError(f"no embeddings in {f}; nothing to index")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    report: dict[str, Any] = {}
    for name, f in files.items():
        x = open_npy(f)
        index, infos, secs = build_one(f, out / f"{name}.index", out / f"{name}_infos.json", icfg)
        index = apply_params(index, infos.get("index_param"))
        rng = np.random.default_rng([cfg.seed, 11])
        queries = np.sort(rng.choice(len(x), size=min(icfg.recall_sample, len(x)), replace=False))
        t1 = time.time()
        rec = recall_at_k(index, x, queries, icfg.recall_k, icfg.metric_type)
        report[name] = {"vectors": int(len(x)), "dim": int(x.shape[1]), "index_key": infos.get("index_key"),
                        "index_param": infos.get("index_param"), "build_seconds": round(secs, 2),
                        "recall_seconds": round(time.time() - t1, 2), "index_bytes": (out / f"{name}.index").stat().st_size,
                        "recall_queries": int(len(queries)), **{k: round(v, 4) for k, v in rec.items()}}
        if log:
            log(f"index {name}: {infos.get('index_key')} over {len(x)} x {x.shape[1]} in {secs:.1f}s, "
                f"recall@{icfg.recall_k} {rec[f'recall@{min(icfg.recall_k, len(x))}']:.3f}")
        del index
    write_json_atomic(out / "report.json", report)
    write_manifest(out, "index", emb["cache_key"], fields,
                   counts={f"{n}_vectors": r["vectors"] for n, r in report.items()},
                   extra={"report": report, "clip_model": emb.get("clip_model")})
    return {**report, "cached": False}


def run(ctx: Context) -> Report:
    """Why: both indexes over the finished embeddings."""
    return index_stage(ctx.dir("embed"), ctx.dir("index"), ctx.cfg, log=ctx.log)


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: current when built over the embeddings the embed stage should have, with today's fields."""
    return compare("index", stage_dir(cfg, "index"), up["embed"].key, cfg.fields_for(FIELDS), {"embed": up["embed"]})


STAGE = Stage("index", needs=("embed",), run=run, status=status, fields=tuple(FIELDS))
