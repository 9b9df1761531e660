"""The `cocu_pipeline` flow: the registry's stages in order (`cocu_core.stages.STAGES`: toy world -> download ->
encoder -> embed -> index -> vocabulary -> concept embeddings -> curate (one task per shard, run concurrently) ->
semantic-gap report -> train -> evaluate).

Each stage runs in the generic task (flows/tasks.py); stages skip work themselves when their
manifest matches (the cache key is the stage's inputs fingerprint plus the config fields it reads),
so a rerun with unchanged inputs is all cache hits, also across Prefect result-storage resets.
`only` / `from_stage` run one stage, or one stage and everything after it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from cocu_core.env import apply_quiet_env

apply_quiet_env()  # before Prefect and the stage libraries are imported

from prefect import flow  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402

from cocu_core.config import PipelineConfig, deep_merge, load_config, parse_override  # noqa: E402
from cocu_core.io import write_json_atomic  # noqa: E402
from cocu_core.layout import lock_path, run_state_path, stage_dir  # noqa: E402
from cocu_core.lock import EXCLUSIVE, Lease  # noqa: E402
from cocu_core.runtime import resolve_concurrency, resolve_threads  # noqa: E402
from cocu_core.stages import STAGES, preflight, select_stages  # noqa: E402
from cocu_core.stages.curate import Prepared, summarise_shards  # noqa: E402
from flows import publish
from flows import tasks as T  # noqa: E402

# Which stage the flow is in, for the one-line message when a run is interrupted (`flows/run.py`).
RUN_STATE: dict[str, Any] = {"stage": None, "config": None}


def resolve_config(config_path: str, overrides: Optional[list[str]]) -> PipelineConfig:
    """Why: flows receive plain strings (deployable parameters) and rebuild the typed config."""
    extra: dict = {}
    for item in overrides or []:
        extra = deep_merge(extra, parse_override(item))
    return load_config(config_path, extra)


class StageRun:
    """Why: one place that runs the selected stages in order, times them and records which one is running."""

    def __init__(self, cfg: PipelineConfig, selected: list[str]):
        self.cfg, self.selected = cfg, selected
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.concurrency = resolve_concurrency(cfg.runtime.concurrency)
        self.threads_alone = resolve_threads(cfg.runtime.threads, 1)  # one task at a time: all its cores
        self.threads_each = resolve_threads(cfg.runtime.threads, self.concurrency)  # fanned-out tasks: a share each

    def enter(self, stage: str) -> None:
        RUN_STATE["stage"] = stage
        write_json_atomic(run_state_path(self.cfg), {"stage": stage, "pid": os.getpid(),
                                                                 "since": time.time()})

    def __call__(self, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if stage not in self.selected:
            return None
        self.enter(stage)
        t0 = time.time()
        self.results[stage] = fn(*args, **kwargs)
        self.timings[stage] = round(time.time() - t0, 1)
        return self.results[stage]

    def wants(self, *stages: str) -> bool:
        return any(s in self.selected for s in stages)


CURATION = ("concepts", "curate", "semantic_gap")  # run as one block: they share the curation inputs


def curate_all(run: StageRun, prep: Prepared) -> list[dict]:
    """Why: one task per shard, `runtime.concurrency` at a time through the flow's task runner, each with its
    share of the cores; the big inputs are passed by reference (`quote`: Prefect does not walk them)."""
    from cocu_core.curation.data import shard_names  # torch, through the curation package: only when curating

    shards = shard_names(prep.data)
    results: list[dict] = []
    for i in range(0, len(shards), run.concurrency):
        futures = [T.curate_shard_task.submit(run.cfg, s, quote(prep), run.threads_each)
                   for s in shards[i:i + run.concurrency]]
        results += [f.result() for f in futures]
    return results


def curation_stages(run: StageRun) -> None:
    """Why: concept embeddings, the curation inputs and indexes (each a task), then curate and the gap report."""
    cfg = run.cfg
    if not run.wants(*CURATION):
        return
    run("concepts", T.task_for("concepts"), "concepts", cfg, run.threads_alone)
    if not run.wants("curate", "semantic_gap"):
        return
    run.enter("curate")
    t0 = time.time()
    data, encoder_id = T.curation_inputs_task(cfg, run.threads_alone)
    prep = Prepared(data, T.load_indexes_task(cfg), encoder_id)
    if run.wants("curate"):
        shard_results = curate_all(run, T.carry_plan_task(cfg, quote(prep), run.threads_alone))
        run.results["curate"] = summarise_shards(shard_results)
        run.timings["curate"] = round(time.time() - t0, 1)
        publish.curate(cfg, {**run.results["curate"], "per_shard": shard_results}, run.timings["curate"],
                         f", {run.concurrency} shards at a time with {run.threads_each} thread(s) each")
    if cfg.data.source == "toyworld":
        gap = run("semantic_gap", T.semantic_gap_task, cfg, quote(prep), run.threads_alone)
        if gap:
            print(gap["table"])
            if gap.get("salience_table"):
                print("curation encoder's salience bias (present classes in the image's top 3, by area quartile):\n"
                      + gap["salience_table"])


def summary_markdown(run: StageRun, elapsed: float, flow_name: str = "cocu_pipeline") -> str:
    """Why: the run at a glance in the UI: each stage's time and cache outcome, with links to its outputs."""
    lines = [f"# {flow_name} '{run.cfg.name}'", "", f"Work folder: [{run.cfg.workpath}]({run.cfg.workpath.as_uri()}); "
             f"{elapsed:.1f}s in all; {run.concurrency} task(s) at a time.", "",
             "| stage | seconds | cache | outputs |", "|---|---|---|---|"]
    for stage, secs in run.timings.items():
        r = run.results.get(stage)
        cached = "hit" if isinstance(r, dict) and r.get("cached") else "computed"
        d = stage_dir(run.cfg, stage)
        lines.append(f"| {stage} | {secs} | {cached} | [{d.relative_to(run.cfg.workpath)}]({d.as_uri()}) |")
    arch = run.results.get("archives")
    if arch:
        d = Path(arch["dir"])
        lines += ["", f"Archives version {arch['version']}: [{d.relative_to(run.cfg.workpath)}]({d.as_uri()})"]
    return "\n".join(lines) + "\n"


@flow(name="cocu_pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner())
def cocu_pipeline(config_path: str = "configs/toy.yaml", overrides: Optional[list[str]] = None,
                  only: Optional[str] = None, from_stage: Optional[str] = None) -> dict:
    """Run the pipeline's stages for one config (all, `only` one, or `from_stage` on); returns a summary dict."""
    t_start = time.time()
    RUN_STATE.update(stage=None, config=config_path)
    cfg = resolve_config(config_path, overrides)
    selected = select_stages(cfg, only, from_stage)
    if "download" in selected:
        preflight(cfg)
    cfg.workpath.mkdir(parents=True, exist_ok=True)
    run = StageRun(cfg, selected)
    execute(run)
    return finish(run, "cocu_pipeline", t_start)


READERS = ("train", "evaluate")  # pin their inputs and hold their own folder's lock (cocu_core.lock), not the work lock


def holder_label(flow_name: str) -> str:
    """Why: the work-folder lock names the flow run, so a refused run can find it in the UI."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return f"{flow_name} flow run {run_id}" + (f" ({flow_run.get_name()})" if run_id else "")


def execute(run: StageRun, flow_name: str = "cocu_pipeline") -> None:
    """Why: the registry's stages in order, shared by the pipeline and the re-curation flow; unselected stages are
    skipped; the curation block runs where its first stage stands, then the archives are published. The writing
    stages run under the exclusive work-folder lock, given back before training, which pins its archives."""
    cfg, alone = run.cfg, run.threads_alone
    lease = None
    if any(s not in READERS for s in run.selected):
        cfg.workpath.mkdir(parents=True, exist_ok=True)
        lease = Lease(lock_path(cfg), EXCLUSIVE, cfg.runtime.lock_timeout, holder_label(flow_name), log=print)
    try:
        for name in STAGES:
            if name in READERS and lease is not None:
                lease.release()
            if name == CURATION[0]:
                curation_stages(run)
                if run.wants("curate"):
                    run.results["archives"] = T.publish_archives_task(cfg, run.results.get("download") or {})
            elif name not in CURATION:
                run(name, T.task_for(name), name, cfg, alone)
    finally:
        if lease is not None:
            lease.release()
    RUN_STATE["stage"] = None
    run_state_path(cfg).unlink(missing_ok=True)


def finish(run: StageRun, flow_name: str, t_start: float) -> dict:
    """Why: one summary line (printed by `cocu run`) and the summary artifact."""
    elapsed = time.time() - t_start
    stages = ", ".join(f"{k} {v}s{' (cached)' if isinstance(run.results.get(k), dict) and run.results[k].get('cached') else ''}"
                       for k, v in run.timings.items())
    summary = f"{flow_name} '{run.cfg.name}' finished in {elapsed:.1f}s; outputs in {run.cfg.workpath}; stages: {stages}"
    publish.publish_markdown(run.cfg, "summary" if flow_name == "cocu_pipeline" else "recurate-run-summary",
                       summary_markdown(run, elapsed, flow_name), "run summary")
    return {**run.results, "summary": summary, "timings": run.timings, "seconds": round(elapsed, 1)}
