"""The paper's Table 3 in miniature: GroupViT trained per arm and seed on the toy world, evaluated on toy val
(`run_arm`, `ablation_stage` here; which runs and inputs in `plan.py`; tables, curves and maps in `report.py`).

Every arm (caption nouns, variants #1-#3, full CoCu, the authors' top-k release, the ground-truth oracle)
trains with the same budget (``ablation.epochs``), the same seeds and so the same initialisation and data
order; only the text inputs of the multi-label loss differ. Layout of the output folder
(``<workdir>/<ablation.out>``)::

    runs/<arm>/seed<k>/train/     the train stage's folder (checkpoints, final.pt, loss_curve.csv, manifest)
    runs/<arm>/seed<k>/evaluate/  the evaluate stage's folder (results.json, table.md, manifest)
    table.md, table.json          per arm: mean and std over seeds of mIoU, stuff/thing mIoU, zero-shot top-1
    loss_curves.png               training loss of the `ablation.map_arms` arms (the paper's Figure 3a)
    maps/<image>.png              missing-concept activation maps, one row per map arm (the paper's Figure 4)
    training_signal/              per arm: ground-truth concepts reached by its prompts, wrong prompts (first seed)
    report.md                     all of the above, images linked (inlined in the Prefect artifact)
    manifest.json                 the runs' cache keys and the ablation fields (written last)

Each run is the pipeline's own train and evaluate stage, cached by their manifests: a rerun skips
finished runs and resumes an interrupted one from its last step checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cocu_core.ablation.plan import (ARM_LABELS, AblationError, ablation_dir, arm_config, check_inputs,
                                     needed_curations, needed_for, run_dir, split_arms)
from cocu_core.ablation.report import (METRICS, aggregate, class_kinds, embedded_report, loss_plot, missing_concept_maps,
                                       ordering_note, report_markdown, run_metrics, table_markdown,
                                       training_signal_section)
from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.io import (read_json, read_manifest, stage_is_current, write_bytes_atomic, write_json_atomic,
                          write_manifest)
from cocu_core.stages.evaluate import evaluate_stage
from cocu_core.stages.train import train_stage

__all__ = ["ARM_LABELS", "AblationError", "METRICS", "ablation_dir", "ablation_report", "ablation_stage", "aggregate",
           "arm_config", "check_inputs", "class_kinds", "embedded_report", "loss_plot", "missing_concept_maps",
           "needed_curations", "needed_for", "ordering_note", "report_markdown", "run_arm", "run_dir", "run_metrics",
           "split_arms", "table_markdown", "training_signal_section"]

ABLATION_VERSION = 1


def ablation_fields(cfg: PipelineConfig) -> dict[str, Any]:
    """Why: the settings the report depends on besides the runs themselves."""
    return cfg.fields_for(["ablation", "eval.templates"])


def ablation_report(cfg: PipelineConfig, runs: Sequence[dict[str, Any]], unavailable: dict[str, str],
                    out_dir: Optional[str | Path] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Why: table, plots, maps and report from finished runs; cached by the runs' cache keys."""
    out = ablation_dir(cfg, out_dir)
    a = cfg.ablation
    inputs = fingerprint({"runs": sorted((r["arm"], r["seed"], r["train_key"], r["eval_key"]) for r in runs),
                          "unavailable": sorted(unavailable), "version": ABLATION_VERSION})
    fields = ablation_fields(cfg)
    public_runs = [{k: v for k, v in r.items() if not k.endswith("_key")} for r in runs]
    if stage_is_current(out, inputs, fields) and (out / "table.json").is_file():
        return {**read_json(out / "table.json"), "runs": public_runs, "cached": True, "dir": str(out)}
    (out / "manifest.json").unlink(missing_ok=True)
    arms = [x for x in a.arms if x not in unavailable]
    agg = aggregate(runs, arms)
    table = table_markdown(agg, unavailable)
    curve = loss_plot(out, [x for x in a.map_arms if x in arms], a.seeds, out / "loss_curves.png")
    figures = missing_concept_maps(cfg, out, [x for x in a.map_arms if x in arms], a.seeds[0], a.map_images, log)
    signal = training_signal_section(cfg, out, arms, a.seeds[0])
    result = {"arms": agg, "runs": public_runs,
              "unavailable": unavailable, "table": table, "loss_plot": str(curve) if curve else None,
              "maps": list(figures), "training_signal": signal[0] or signal[1], "epochs": a.epochs, "seeds": a.seeds,
              "model": cfg.train.model}
    write_json_atomic(out / "table.json", result)
    write_bytes_atomic(out / "table.md", (table + "\n").encode())
    write_bytes_atomic(out / "report.md", report_markdown(cfg, out, table, agg, curve, figures, signal).encode())
    write_manifest(out, "ablation", inputs, fields, {"runs": len(runs), "arms": len(agg)},
                   {"unavailable": unavailable})
    log(f"ablation: report in {out / 'report.md'}")
    return {**result, "cached": False, "dir": str(out)}


def run_arm(cfg: PipelineConfig, arm: str, seed: int, out_dir: Optional[str | Path] = None,
            log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Why: one (arm, seed) run through the pipeline's own train and evaluate stages (each cached, resumable)."""
    d = run_dir(ablation_dir(cfg, out_dir), arm, seed)
    c = arm_config(cfg, seed)
    tr = train_stage(c, variant=arm, out_dir=d / "train", log=log, progress=progress)
    ev = evaluate_stage(c, checkpoint=d / "train" / "final.pt", out_dir=d / "evaluate", log=log, progress=progress,
                        label=f"{arm} seed {seed}")
    row = {"arm": arm, "seed": seed, **run_metrics(ev), "steps": tr.get("steps"),
           "train_seconds": tr.get("seconds"), "last_loss": tr.get("last_loss"),
           "cached": bool(tr.get("cached") and ev.get("cached")),
           "train_key": (read_manifest(d / "train") or {}).get("cache_key"),
           "eval_key": (read_manifest(d / "evaluate") or {}).get("cache_key")}
    log(f"ablation: {arm} seed {seed}: mIoU {row['mIoU']:.2f}, stuff {row['stuff_mIoU'] or 0:.2f}, "
        f"thing {row['thing_mIoU'] or 0:.2f}, top-1 {row['top1'] or 0:.1f}" + (" (cached)" if row["cached"] else ""))
    return row


def ablation_stage(cfg: PipelineConfig, out_dir: Optional[str | Path] = None, log: Callable[[str], None] = print,
                   progress: bool = True, config_name: str = "CONFIG") -> dict[str, Any]:
    """Why: every arm x seed trained and evaluated (finished runs reused), then the table, plots, maps and report."""
    from tqdm import tqdm

    arms, unavailable = split_arms(cfg.ablation.arms)
    for arm, why in unavailable.items():
        log(f"ablation: arm '{arm}' skipped: {why}")
    check_inputs(cfg, arms, config_name)
    plan = [(arm, seed) for seed in cfg.ablation.seeds for arm in arms]
    runs = []
    for arm, seed in tqdm(plan, desc="ablation", unit="run", disable=not progress):
        runs.append(run_arm(cfg, arm, seed, out_dir, log, progress))
    return ablation_report(cfg, runs, unavailable, out_dir, log)
