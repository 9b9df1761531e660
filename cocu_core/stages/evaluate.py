"""evaluate: a GroupViT checkpoint -> zero-shot segmentation mIoU per benchmark, classification, report.

Reads   train/<variant>/final.pt (or eval.checkpoint), each benchmark's folder (eval.roots, toyworld/val for toy)
Writes  evaluate/<variant>/ (layout below)
Key     inputs_key(checkpoint bytes, dataset folders, VERSION) + eval_fields (the eval section less RUNTIME_FIELDS)

Layout of ``out_dir`` (``<workdir>/evaluate/<variant>``)::

    results.json        per dataset: mIoU, pixel accuracy, per-class IoU, settings used, images, images/s
    table.md            the paper's Table 1 layout: one row per model, one column per dataset, plus the average
    per_class_iou.md    per-class IoU of every dataset
    classification.json zero-shot top-1/top-5 (toy world: largest thing per val image; ImageNet folder if set)
    panels/             PNG panels (image, truth, prediction, groups, maps of concepts missing from the caption)
    report.md           all of the above, for people and the Prefect UI
    manifest.json       inputs fingerprint (checkpoint, datasets), config fields, counts (written last)
"""


from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from cocu_core.config import EvalConfig, PipelineConfig, fingerprint
from cocu_core.evaluation.report import format_table, per_class_markdown, report_markdown
from cocu_core.evaluation.roots import EvaluationError, dataset_root
from cocu_core.io import read_json, stage_is_current, write_bytes_atomic, write_json_atomic, write_manifest
from cocu_core.layout import stage_dir
from cocu_core.stages.base import DONE, Context, Report, Stage, StageStatus, compare
from cocu_core.stages.train import train_dir_for

VERSION = 3  # 2: GroupViT's background indicator, ImageNet-S large images, CLIP ImageNet names; 3: the painting row


RUNTIME_FIELDS = {"eval.device", "eval.window_batch", "eval.save_predictions", "eval.checkpoint"}


FIELDS = [f"eval.{k}" for k in EvalConfig.model_fields if f"eval.{k}" not in RUNTIME_FIELDS]  # keyed


def eval_fields(cfg: PipelineConfig) -> dict[str, Any]:
    """Why: the settings that change the numbers; device and batching do not."""
    return cfg.fields_for(FIELDS)


def inputs_key(checkpoint_id: str, roots: Mapping[str, Path]) -> str:
    """Why: the evaluation's inputs key (checkpoint bytes, dataset folders, VERSION), shared with `cocu status`."""
    return fingerprint({"checkpoint": checkpoint_id, "datasets": {d: str(Path(r).resolve()) for d, r in roots.items()},
                        "version": VERSION})


def file_fingerprint(path: Path) -> str:
    """Why: a checkpoint is identified by its bytes, wherever it was copied to."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def resolve_checkpoint(cfg: PipelineConfig, checkpoint: Optional[str | Path]) -> Path:
    """Why: `--checkpoint`, else eval.checkpoint, else the train stage's final model of the variant."""
    p = Path(checkpoint or cfg.eval.checkpoint or train_dir_for(cfg) / "final.pt").expanduser()
    if not p.exists():
        raise EvaluationError(f"checkpoint not found: {p}; train first (`cocu train -c CONFIG`) or pass --checkpoint")
    return p


def evaluate_stage(cfg: PipelineConfig, checkpoint: Optional[str | Path] = None, out_dir: Optional[Path] = None,
                   log: Callable[[str], None] = print, progress: bool = True, random_init: bool = False,
                   label: Optional[str] = None) -> dict[str, Any]:
    """Why: evaluate (or reuse the evaluation of) one model on the configured benchmarks."""
    import torch

    from cocu_core.evaluation.datasets import get_dataset  # torch
    from cocu_core.evaluation.zero_shot import evaluate_classification, evaluate_segmentation, missing_concepts
    from cocu_core.train.distributed import resolve_device  # torch

    device = resolve_device(cfg.eval.device)
    if random_init:
        from cocu_core.model import create_model  # torch

        torch.manual_seed(cfg.train.seed)
        model, ck_id, label = create_model(cfg.train.model, **cfg.train.model_overrides).to(device).eval(), f"random:{cfg.train.model}:{cfg.train.seed}", label or f"{cfg.train.model} (random init)"
    else:
        from cocu_core.train.checkpoint import load_model  # torch

        ck = resolve_checkpoint(cfg, checkpoint)
        ck_id = file_fingerprint(ck)
        model = None
        label = label or f"{ck.parent.name if ck.name == 'final.pt' else ck.name}"
    out = Path(out_dir) if out_dir else stage_dir(cfg, "evaluate", "random-init" if random_init else None)
    roots = {d: dataset_root(cfg, d) for d in cfg.eval.datasets}
    datasets = {d: get_dataset(d, r) for d, r in roots.items()}  # layout errors surface before any model work
    inputs = inputs_key(ck_id, roots)
    fields = eval_fields(cfg)
    if stage_is_current(out, inputs, fields) and not cfg.eval.save_predictions:
        return {**read_json(out / "results.json"), "cached": True, "dir": str(out)}
    if model is None:
        model = load_model(ck, device)
    (out / "manifest.json").unlink(missing_ok=True)
    preds = Path(cfg.eval.save_predictions).expanduser() if cfg.eval.save_predictions else None
    results = {}
    for d, ds in datasets.items():
        log(f"evaluate: {d} ({len(ds)} images) with {label}")
        results[d] = evaluate_segmentation(model, ds, cfg, device, out, preds, progress, missing_concepts(cfg, d))
        log(f"evaluate: {d} mIoU {results[d]['mIoU']:.2f} ({results[d]['images_per_s']} images/s)")
    cls = evaluate_classification(model, cfg, device)
    table = format_table({label: {d: r["mIoU"] for d, r in results.items()},
                          f"{label}: painting (top class over the whole image, no grouping)":
                          {d: r["painting_mIoU"] for d, r in results.items()}}, list(datasets))
    report = {"label": label, "segmentation": results, "classification": cls, "table": table,
              "checkpoint": ck_id}
    write_json_atomic(out / "results.json", report)
    write_bytes_atomic(out / "table.md", (table + "\n").encode())
    write_bytes_atomic(out / "per_class_iou.md", per_class_markdown(results).encode())
    write_bytes_atomic(out / "report.md", report_markdown(label, results, cls, table, out).encode())
    counts = {f"{d}_mIoU": round(r["mIoU"], 3) for d, r in results.items()}
    counts.update({f"{d}_painting_mIoU": round(r["painting_mIoU"], 3) for d, r in results.items()})
    counts.update({f"{k}_top1": round(v["top1"], 3) for k, v in cls.items()})
    write_manifest(out, "evaluate", inputs, fields, counts, {"label": label})
    return {**report, "cached": False, "dir": str(out)}


def run(ctx: Context) -> Report:
    """Why: evaluate (or reuse the evaluation of) the configured variant's trained model."""
    return evaluate_stage(ctx.cfg, log=ctx.log, progress=ctx.progress)


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the key of today's checkpoint bytes and dataset folders, through the stage's own `inputs_key`."""
    folder = stage_dir(cfg, "evaluate")
    needs = {"train": up["train"]} if "train" in up and not cfg.eval.checkpoint else {}
    inputs = None
    if all(s.state == DONE for s in needs.values()):
        try:
            ck = resolve_checkpoint(cfg, None)
            inputs = inputs_key(file_fingerprint(ck), {d: dataset_root(cfg, d) for d in cfg.eval.datasets})
        except (FileNotFoundError, ValueError):
            inputs = None
    return compare("evaluate", folder, inputs, eval_fields(cfg), needs, "the checkpoint or the datasets changed")


STAGE = Stage("evaluate", needs=("train",), run=run, status=status, fields=tuple(FIELDS))
