"""The evaluation stage: a GroupViT checkpoint -> zero-shot segmentation mIoU per benchmark, classification, report.

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
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.io import read_json, stage_is_current, write_bytes_atomic, write_json_atomic, write_manifest

EVAL_VERSION = 2  # 2: GroupViT's background indicator, ImageNet-S large images, CLIP ImageNet names
RUNTIME_FIELDS = {"eval.device", "eval.window_batch", "eval.save_predictions", "eval.checkpoint"}


class EvaluationError(FileNotFoundError):
    """An evaluation input is missing (no checkpoint, no dataset folder); the message says what to do."""


def eval_fields(cfg: PipelineConfig) -> dict[str, Any]:
    """Why: the settings that change the numbers; device and batching do not."""
    names = [f"eval.{k}" for k in type(cfg.eval).model_fields]
    return cfg.fields_for([n for n in names if n not in RUNTIME_FIELDS])


def dataset_root(cfg: PipelineConfig, name: str) -> Path:
    """Why: one place that says where each benchmark lives (the toy val split by default for `toy`)."""
    if name in cfg.eval.roots:
        return Path(cfg.eval.roots[name]).expanduser()
    if name == "toy":
        return cfg.workpath / "toyworld" / "val"
    if name == "voc" and cfg.eval.voc_root:
        return Path(cfg.eval.voc_root).expanduser()
    raise EvaluationError(f"no folder for dataset '{name}': set eval.roots.{name} (or eval.voc_root for voc)")


def settings_for(cfg: PipelineConfig, ds):
    """Why: the dataset's protocol settings, each overridable from the config (and visible in results)."""
    from cocu_core.evaluation.segmentation import SegSettings

    d, e = ds.settings, cfg.eval
    return SegSettings(resize_long=e.resize_long or d.resize_long, resize_short=e.resize_short or d.resize_short,
                       crop=e.crop or d.crop, stride=e.stride or d.stride, bg_thresh=bg_threshold_for(cfg, ds),
                       top_k=e.top_k_classes, window_batch=e.window_batch, downsample_large=d.downsample_large)


def bg_threshold_for(cfg: PipelineConfig, ds) -> Optional[float]:
    """Why: eval.bg_threshold is per dataset (a mapping) or one number for the single background dataset evaluated."""
    if not ds.has_background:
        return None
    t = cfg.eval.bg_threshold
    if isinstance(t, dict):
        return float(t.get(ds.name, ds.settings.bg_thresh))
    return ds.settings.bg_thresh if t is None else float(t)


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
    from cocu_core.train.stage import train_dir_for

    p = Path(checkpoint or cfg.eval.checkpoint or train_dir_for(cfg) / "final.pt").expanduser()
    if not p.exists():
        raise EvaluationError(f"checkpoint not found: {p}; train first (`cocu train -c CONFIG`) or pass --checkpoint")
    return p


def _class_lists(ds) -> list[str]:
    return list(ds.class_names[1:] if ds.has_background else ds.class_names)


def _missing_concepts(cfg: PipelineConfig, name: str) -> dict[str, list[str]]:
    """Why: toy val images know which present concepts their caption leaves out (the paper's Figure 4)."""
    if name != "toy":
        return {}
    import pyarrow.parquet as pq

    p = dataset_root(cfg, name) / "pairs.parquet"
    if not p.is_file():
        return {}
    t = pq.read_table(p, columns=["key", "concepts", "named"]).to_pylist()
    return {r["key"]: [c for c in r["concepts"] if c not in set(r["named"] or [])] for r in t}


@torch.no_grad()
def evaluate_segmentation(model, ds, cfg: PipelineConfig, device: torch.device, out_dir: Optional[Path] = None,
                          save_predictions: Optional[Path] = None, progress: bool = True,
                          missing: Optional[dict[str, list[str]]] = None) -> dict[str, Any]:
    """Why: one benchmark's confusion matrix over all its images, then mmseg's metrics."""
    from tqdm import tqdm

    from cocu_core.evaluation.metrics import ConfusionMatrix
    from cocu_core.evaluation.segmentation import class_embeddings, predict
    from cocu_core.templates import get_templates

    settings = settings_for(cfg, ds)
    classes = class_embeddings(model, _class_lists(ds), get_templates(cfg.eval.templates), device)
    cm = ConfusionMatrix(len(ds.class_names), ds.ignore_index, device)
    n = min(len(ds), cfg.eval.max_images or len(ds))
    t0 = time.time()
    panels = []
    for i in tqdm(range(n), desc=f"evaluate {ds.name}", unit="img", disable=not progress, leave=False):
        s = ds[i]
        pred = predict(model, s.image, classes, settings, out_size=tuple(s.label.shape))
        cm.update(pred, torch.from_numpy(s.label).to(device))
        if save_predictions is not None:
            ds.save_prediction(save_predictions / ds.name / f"{s.id}.png", pred.cpu().numpy())
        if out_dir is not None and len(panels) < cfg.eval.panels:
            panels.append(_panel(model, s, pred, classes, settings, ds, out_dir, missing or {}))
    dt = time.time() - t0
    res = cm.results()
    return {"dataset": ds.name, "images": n, "seconds": round(dt, 2), "images_per_s": round(n / dt, 2) if dt else None,
            "mIoU": 100 * res.miou, "aAcc": 100 * res.aacc, "mAcc": 100 * res.macc,
            "per_class_iou": {c: (None if np.isnan(v) else 100 * float(v)) for c, v in zip(ds.class_names, res.iou)},
            "settings": settings.__dict__, "panels": panels}


def _panel(model, s, pred, classes, settings, ds, out_dir: Path, missing: dict[str, list[str]]) -> str:
    """Why: a picture per image: truth, prediction, groups and the maps of concepts the caption left out."""
    present = [ds.class_names[c] for c in np.unique(s.label) if c != ds.ignore_index and
               (not ds.has_background or c != 0)]
    wanted = missing.get(s.id, present) if missing else present
    path = out_dir / "panels" / f"{ds.name}_{s.id}.png"
    concept_panel(model, s, pred, classes, settings, ds, path, wanted,
                  f"{ds.name} {s.id}" + (" (maps: concepts missing from the caption)" if missing else ""))
    return str(path)


def concept_panel(model, s, pred, classes, settings, ds, path: Path, concepts: Sequence[str], title: str) -> Path:
    """Why: one row per image and model: image, truth, prediction, groups and where up to 4 of the given concepts
    light up (:func:`~cocu_core.evaluation.segmentation.concept_maps`); the evaluation panels and the ablation's
    Figure 4 draw the same thing."""
    from cocu_core.evaluation.pictures import panel_png
    from cocu_core.evaluation.segmentation import concept_maps

    names = _class_lists(ds)
    wanted = [c for c in concepts if c in names][:4]
    groups, maps = concept_maps(model, s.image, classes[[names.index(c) for c in wanted]], settings)
    return panel_png(path, s.image, s.label, pred.cpu().numpy(), groups.cpu().numpy(),
                     dict(zip(wanted, maps.cpu().numpy())), list(ds.class_names), ds.palette, title,
                     ignore_index=ds.ignore_index)


def evaluate_classification(model, cfg: PipelineConfig, device: torch.device) -> dict[str, Any]:
    """Why: zero-shot top-1/top-5 on the toy world (largest thing) and on an ImageNet-style folder if configured."""
    from cocu_core.evaluation.classification import classify, topk_accuracy
    from cocu_core.evaluation.segmentation import class_embeddings
    from cocu_core.templates import get_templates

    out: dict[str, Any] = {}
    templates = get_templates(cfg.eval.classification_templates)
    views = []
    if "toy" in cfg.eval.datasets:
        from cocu_core.evaluation.datasets import ToyClassification

        views.append(("toy", ToyClassification(dataset_root(cfg, "toy")), 1.0))
    if cfg.eval.imagenet_root:
        from cocu_core.evaluation.datasets import ClassificationFolder

        views.append(("imagenet", ClassificationFolder(Path(cfg.eval.imagenet_root).expanduser()), 0.875))
    for name, view, crop_pct in views:
        n = min(len(view), cfg.eval.max_images or len(view))
        classes = class_embeddings(model, view.class_names, templates, device)
        t0 = time.time()
        labels: list[int] = []

        def images():
            for i in range(n):
                s = view[i]
                labels.append(s.label)
                yield s.image

        top5 = classify(model, images(), classes, crop_pct=crop_pct)
        out[name] = {**topk_accuracy(top5, labels), "seconds": round(time.time() - t0, 2)}
    return out


def format_table(rows: dict[str, dict[str, float]], datasets: Sequence[str]) -> str:
    """Why: the paper's Table 1 layout: a row per model, a column per dataset (mIoU %), plus the average."""
    head = "| model | " + " | ".join(datasets) + " | avg |"
    lines = [head, "|" + "---|" * (len(datasets) + 2)]
    for model, res in rows.items():
        vals = [res.get(d) for d in datasets]
        avg = float(np.mean([v for v in vals if v is not None])) if any(v is not None for v in vals) else None
        lines.append(f"| {model} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals)
                     + f" | {'-' if avg is None else f'{avg:.1f}'} |")
    return "\n".join(lines)


def per_class_markdown(results: dict[str, Any]) -> str:
    """Why: which classes a model segments and which it misses, per benchmark."""
    lines = []
    for name, r in results.items():
        lines += [f"## {name}: per-class IoU (%)", "", "| class | IoU |", "|---|---|"]
        lines += [f"| {c} | {'-' if v is None else f'{v:.1f}'} |" for c, v in r["per_class_iou"].items()]
        lines += ["", f"settings: {r['settings']}; {r['images']} images, {r['images_per_s']} images/s", ""]
    return "\n".join(lines)


def _report_md(label: str, results: dict[str, Any], cls: dict[str, Any], table: str, out_dir: Path) -> str:
    import base64

    lines = [f"# Zero-shot evaluation: {label}", "", "## Segmentation mIoU (%)", "", table, ""]
    if cls:
        lines += ["## Zero-shot classification", "", "| data | top-1 | top-5 | images |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['top1']:.1f} | {v['top5']:.1f} | {v['images']} |" for k, v in cls.items()]
        lines.append("")
    lines.append(per_class_markdown(results))
    for name, r in results.items():
        if r["panels"]:
            lines += [f"## {name}: panels", ""]
        for p in r["panels"]:
            b64 = base64.b64encode(Path(p).read_bytes()).decode()
            lines.append(f"![{Path(p).name}](data:image/png;base64,{b64})")
        lines.append("")
    return "\n".join(lines)


def evaluate_stage(cfg: PipelineConfig, checkpoint: Optional[str | Path] = None, out_dir: Optional[Path] = None,
                   log: Callable[[str], None] = print, progress: bool = True, random_init: bool = False,
                   label: Optional[str] = None) -> dict[str, Any]:
    """Why: evaluate (or reuse the evaluation of) one model on the configured benchmarks."""
    from cocu_core.evaluation.datasets import get_dataset
    from cocu_core.train.distributed import resolve_device
    from cocu_core.train.stage import train_variant

    device = resolve_device(cfg.eval.device)
    if random_init:
        from cocu_core.model import create_model

        torch.manual_seed(cfg.train.seed)
        model, ck_id, label = create_model(cfg.train.model, **cfg.train.model_overrides).to(device).eval(), f"random:{cfg.train.model}:{cfg.train.seed}", label or f"{cfg.train.model} (random init)"
    else:
        from cocu_core.train.checkpoint import load_model

        ck = resolve_checkpoint(cfg, checkpoint)
        ck_id = file_fingerprint(ck)
        model = None
        label = label or f"{ck.parent.name if ck.name == 'final.pt' else ck.name}"
    out = Path(out_dir) if out_dir else cfg.workpath / "evaluate" / (("random-init" if random_init else train_variant(cfg)))
    roots = {d: dataset_root(cfg, d) for d in cfg.eval.datasets}
    datasets = {d: get_dataset(d, r) for d, r in roots.items()}  # layout errors surface before any model work
    inputs = fingerprint({"checkpoint": ck_id, "datasets": {d: str(r.resolve()) for d, r in roots.items()},
                          "version": EVAL_VERSION})
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
        results[d] = evaluate_segmentation(model, ds, cfg, device, out, preds, progress, _missing_concepts(cfg, d))
        log(f"evaluate: {d} mIoU {results[d]['mIoU']:.2f} ({results[d]['images_per_s']} images/s)")
    cls = evaluate_classification(model, cfg, device)
    table = format_table({label: {d: r["mIoU"] for d, r in results.items()}}, list(datasets))
    report = {"label": label, "segmentation": results, "classification": cls, "table": table,
              "checkpoint": ck_id}
    write_json_atomic(out / "results.json", report)
    write_bytes_atomic(out / "table.md", (table + "\n").encode())
    write_bytes_atomic(out / "per_class_iou.md", per_class_markdown(results).encode())
    write_bytes_atomic(out / "report.md", _report_md(label, results, cls, table, out).encode())
    counts = {f"{d}_mIoU": round(r["mIoU"], 3) for d, r in results.items()}
    counts.update({f"{k}_top1": round(v["top1"], 3) for k, v in cls.items()})
    write_manifest(out, "evaluate", inputs, fields, counts, {"label": label})
    return {**report, "cached": False, "dir": str(out)}
