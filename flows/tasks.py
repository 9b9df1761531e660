"""Prefect tasks: one generic task runs any registered stage (`stage_task`), plus the curation fan-out's tasks and
the archive publication; what each stage shows in the UI is rendered by `flows.publish`.

Every task runs its compute under the thread policy (`cocu_core.runtime.limit_threads`) with the
thread count the flow gives it, so tasks that run side by side never oversubscribe the cores.
Stages skip work themselves when their manifest matches (their cache is on disk), so tasks use
no Prefect result cache (`NO_CACHE`) and persist nothing.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cocu_core import stages, storage
from cocu_core.config import PipelineConfig
from cocu_core.io import read_manifest
from cocu_core.layout import stage_dir, versions_root
from cocu_core.runtime import limit_threads
from cocu_core.stages import curate, semantic_gap
from cocu_core.stages.base import Context
from cocu_core.versions import publish_version, sync_remote_versions, version_dir
from flows import publish
from flows.progress import Progress

STAGE_TASK: dict[str, Any] = {"retries": 0, "cache_policy": NO_CACHE, "persist_result": False}
# Prefect task names that differ from the stage names (what the UI has always shown)
TASK_NAMES = {"concepts": "concept-embeddings", "semantic_gap": "semantic-gap-report"}


def log(msg: str) -> None:
    """Why: a stage's log lines go to the flow-run log."""
    get_run_logger().info(msg)


def context(cfg: PipelineConfig, threads: int, bar: Any = None) -> Context:
    """Why: what a stage gets under Prefect: no tqdm bars (the progress artifact polls the disk), the log."""
    return Context(cfg, log=bar.log_line if bar is not None else log, progress=False, workers=threads)


@task(name="stage", **STAGE_TASK)
def stage_task(name: str, cfg: PipelineConfig, threads: int) -> dict:
    """Run one pipeline stage (or return its cached report) and publish its artifacts."""
    spec = stages.get(name)
    t0 = time.time()
    with limit_threads(threads), Progress.maybe(cfg, name, spec.probe) as bar:
        rep = spec.run(context(cfg, threads, bar))
    secs = time.time() - t0
    publish.REPORT[name](cfg, rep, secs)
    return {**rep, "seconds": rep.get("seconds", round(secs, 2))}


def task_for(name: str):
    """Why: the generic task under the stage's own name in the UI."""
    return stage_task.with_options(name=TASK_NAMES.get(name, name))


@task(name="curation-inputs", **STAGE_TASK)
def curation_inputs_task(cfg: PipelineConfig, threads: int):
    """Embeddings, metadata and each caption's extracted concepts, loaded once for every curation shard."""
    with limit_threads(threads):
        return curate.load_inputs(cfg)


@task(name="load-indexes", **STAGE_TASK)
def load_indexes_task(cfg: PipelineConfig) -> dict:
    """The image and caption FAISS indexes with the search parameters tuned to index.target_recall."""
    return curate.load_indexes(cfg)


@task(name="incremental-plan", **STAGE_TASK)
def carry_plan_task(cfg: PipelineConfig, prep: curate.Prepared, threads: int) -> curate.Prepared:
    """Which earlier archive rows a re-curation recomputes (new neighbours, changed concepts) and which it carries."""
    with limit_threads(threads):
        return curate.with_carry(prep, cfg, context(cfg, threads).log)


@task(name="curate-shard", **STAGE_TASK)
def curate_shard_task(cfg: PipelineConfig, shard: str, prep: curate.Prepared, threads: int) -> dict:
    """Curate one download shard into its Parquet concept archive (cached per shard)."""
    with limit_threads(threads):
        return curate.run_shard(prep, shard, context(cfg, threads))


@task(name="semantic-gap-report", **STAGE_TASK)
def semantic_gap_task(cfg: PipelineConfig, prep: curate.Prepared, threads: int) -> dict:
    """Precision/recall of top-3 curated concepts vs the toy world's ground truth, per method."""
    t0 = time.time()
    with limit_threads(threads):
        rep = semantic_gap.run(context(cfg, threads), prep)
    publish.semantic_gap(cfg, rep, time.time() - t0)
    return {k: v for k, v in rep.items() if k != "examples"}


@task(name="publish-archives", **STAGE_TASK)
def publish_archives_task(cfg: PipelineConfig, download: dict) -> dict:
    """Freeze the curated archives as a numbered version (if they changed) and keep `runtime.keep_versions`."""
    root = versions_root(cfg.workpath, cfg.curation.variant)
    dl = read_manifest(stage_dir(cfg, "download")) or {}
    rec = publish_version(stage_dir(cfg, "curate"), root, cfg.runtime.keep_versions,
                          {"pairs": (dl.get("counts") or {}).get("success"), "download_key": dl.get("cache_key"),
                           "variant": cfg.curation.variant})
    rec["dir"] = str(version_dir(root, rec["version"]))
    if rec["new_version"]:
        log(f"archives: version {rec['version']} in {rec['dir']} ({rec['changes']}); pruned {rec['pruned']}")
    if cfg.storage.archives:  # also on the object store: every local version it lacks (a killed upload redone)
        remote = storage.join(cfg.storage.archives, cfg.curation.variant)
        rec["remote"] = {"location": remote, **sync_remote_versions(root, remote, cfg.runtime.keep_versions,
                                                                   cfg.storage.options, log)}
    return {**rec, "cached": not rec["new_version"]}
