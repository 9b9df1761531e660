"""The `cocu_ablation` flow (`cocu ablation`, `make ablation`): the paper's Table 3 in miniature.

1. upstream: the pipeline's own stages through curation (`flows.pipeline.execute`), once per curation variant
   the arms read (the first pass computes everything, the next ones only re-curate);
2. one task per arm x seed, one after another: `cocu_core.ablation.run_arm` (the train and evaluate stages,
   each cached, so a rerun skips finished runs and resumes an interrupted one);
3. a report task: table, loss curves, missing-concept maps, report.md, and their Prefect artifacts.

`python -m flows.ablation` runs the flow in this process (what `cocu ablation` starts in its own session,
for the same Ctrl-C handling as `cocu run`, see flows/run.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from flows.pipeline import RUN_STATE, StageRun, execute, resolve_config  # sets the quiet/offline environment first

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from cocu_core.config import PipelineConfig, config_from_dict
from cocu_core.layout import run_state_path
from cocu_core.runtime import limit_threads
from cocu_core.stages import applicable_stages
from cocu_core.stages.train import train_probe
from flows import publish
from flows import tasks as T
from flows.progress import Progress


def upstream_stages(cfg: PipelineConfig, variants: list[str]) -> list[str]:
    """Why: the stages the arms need: through curation when a curated variant is read, else the data only."""
    stages = applicable_stages(cfg)
    last = "curate" if variants else "download"
    return [s for s in stages[:stages.index(last) + 1] if s != "semantic_gap"]


def with_variant(cfg: PipelineConfig, variant: str) -> PipelineConfig:
    """Why: the config `cocu run --set curation.variant=V` would use, to curate V with the pipeline's own tasks."""
    data = cfg.model_dump(mode="json")
    data["curation"]["variant"] = variant
    return config_from_dict(data, "<ablation>")


def ensure_upstream(cfg: PipelineConfig, variants: list[str]) -> dict:
    """Why: every input of the arms made (or found cached) by the pipeline's stages, one pass per variant."""
    results = {}
    for v in variants or [cfg.curation.variant]:
        run = StageRun(with_variant(cfg, v), upstream_stages(cfg, variants))
        execute(run, "cocu_ablation")
        results[v] = {k: bool(r.get("cached")) for k, r in run.results.items() if isinstance(r, dict)}
    return results


@task(name="ablation-run", **T.STAGE_TASK)
def ablation_run_task(cfg: PipelineConfig, arm: str, seed: int, threads: int) -> dict:
    """Train and evaluate one arm with one seed (the pipeline's train and evaluate stages, cached)."""
    from cocu_core.ablation import ablation_dir, arm_config, run_arm, run_dir

    c = arm_config(cfg, seed)
    probe = train_probe(c, run_dir(ablation_dir(cfg), arm, seed) / "train")
    with limit_threads(threads), Progress(cfg, "ablation-train", probe):
        return run_arm(cfg, arm, seed, log=T.log, progress=False)


@task(name="ablation-report", **T.STAGE_TASK)
def ablation_report_task(cfg: PipelineConfig, runs: list[dict], unavailable: dict, threads: int) -> dict:
    """Table 3, the loss curves (Figure 3a) and the missing-concept maps (Figure 4), with their artifacts."""
    from cocu_core.ablation import METRICS, ablation_report, embedded_report

    with limit_threads(threads):
        rep = ablation_report(cfg, runs, unavailable, log=T.log)
    rows = []
    for arm, e in rep["arms"].items():
        row = {"arm": arm, "seeds": len(e["seeds"])}
        for key, label in METRICS:
            row[f"{label} mean"], row[f"{label} std"] = e[key]["mean"], e[key]["std"]
        rows.append(row)
    rows += [{"arm": arm, "seeds": 0, "note": why} for arm, why in rep["unavailable"].items()]
    publish.publish_table(cfg, "ablation", rows, f"Table 3 in miniature: mean and std over seeds {cfg.ablation.seeds} "
                                           f"({cfg.ablation.epochs} epochs per arm, {publish.hit(rep)})")
    publish.publish_markdown(cfg, "ablation-report", embedded_report(Path(rep["dir"])),
                       "ablation table, loss curves and missing-concept maps")
    return rep


@flow(name="cocu_ablation", log_prints=True, task_runner=ThreadPoolTaskRunner())
def cocu_ablation(config_path: str = "configs/toy.yaml", overrides: Optional[list[str]] = None) -> dict:
    """Train and evaluate every ablation arm for every seed on the toy world, then write the Table-3 report."""
    from cocu_core.ablation import check_inputs, needed_curations, split_arms

    t_start = time.time()
    RUN_STATE.update(stage=None, config=config_path)
    cfg = resolve_config(config_path, overrides)
    arms, unavailable = split_arms(cfg.ablation.arms)
    for arm, why in unavailable.items():
        print(f"ablation: arm '{arm}' skipped: {why}")
    cfg.workpath.mkdir(parents=True, exist_ok=True)
    upstream = ensure_upstream(cfg, needed_curations(arms))
    t_runs = time.time()
    check_inputs(cfg, arms, config_path)
    state = StageRun(cfg, [])
    plan = [(arm, seed) for seed in cfg.ablation.seeds for arm in arms]
    bar = create_progress_artifact(0.0, key=publish.artifact_key(cfg, "ablation-progress"), description="ablation runs done")
    runs = []
    for i, (arm, seed) in enumerate(plan):
        state.enter(f"ablation {arm} seed {seed}")
        runs.append(ablation_run_task(cfg, arm, seed, state.threads_alone))
        update_progress_artifact(bar, round(100 * (i + 1) / len(plan), 1))
    state.enter("ablation report")
    t_report = time.time()
    rep = ablation_report_task(cfg, runs, unavailable, state.threads_alone)
    RUN_STATE["stage"] = None
    run_state_path(cfg).unlink(missing_ok=True)
    elapsed = time.time() - t_start
    computed = sum(not r["cached"] for r in runs)
    summary = (f"cocu_ablation '{cfg.name}' finished in {elapsed:.1f}s (upstream {t_runs - t_start:.1f}s, runs "
               f"{t_report - t_runs:.1f}s, report {time.time() - t_report:.1f}s): {len(runs)} runs ({computed} trained "
               f"or evaluated now), report in {Path(rep['dir']) / 'report.md'}")
    print(rep["table"])
    return {**rep, "upstream": upstream, "summary": summary, "seconds": round(elapsed, 1)}


def interrupted_line(stage: Optional[str], config: str) -> str:
    """Why: after Ctrl-C, one line: where it stopped and that finished runs are kept."""
    where = f"during '{stage}'" if stage else "before the first stage"
    return (f"cocu ablation: interrupted {where}; finished stages and runs are kept, "
            f"rerun `cocu ablation -c {config}` to resume")


def main(argv: Optional[list[str]] = None) -> int:
    """Why: run the flow in this process; user errors are one line (exit 2), an interrupt one line (exit 130)."""
    p = argparse.ArgumentParser(prog="python -m flows.ablation")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    from cocu_core.config import ConfigError
    from cocu_core.errors import CocuError

    try:
        result = cocu_ablation(config_path=str(Path(args.config).resolve()), overrides=list(args.set))
    except KeyboardInterrupt:
        print(interrupted_line(RUN_STATE.get("stage"), args.config), file=sys.stderr, flush=True)
        return 130
    except (ConfigError, CocuError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(result.get("summary", ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
