"""Zero-shot evaluation of one model: segmentation over a benchmark (confusion matrix, mmseg metrics, panels) and
classification (toy world, ImageNet-style folder), with the protocol settings of each dataset.

Why apart from the stage: the ablation and the command line evaluate models the same way; only
`stages/evaluate.py` decides which checkpoint, which folder and when the cached results stand.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from cocu_core.config import PipelineConfig
from cocu_core.evaluation.datasets import ClassificationFolder, ToyClassification
from cocu_core.evaluation.pictures import panel_png
from cocu_core.evaluation.roots import dataset_root
from cocu_core.templates import get_templates


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


def class_lists(ds) -> list[str]:
    """Why: the classes that get a text embedding (background has none)."""
    return list(ds.class_names[1:] if ds.has_background else ds.class_names)


def missing_concepts(cfg: PipelineConfig, name: str) -> dict[str, list[str]]:
    """Why: toy val images know which present concepts their caption leaves out (the paper's Figure 4)."""
    if name != "toy":
        return {}
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

    settings = settings_for(cfg, ds)
    classes = class_embeddings(model, class_lists(ds), get_templates(cfg.eval.templates), device)
    cm = ConfusionMatrix(len(ds.class_names), ds.ignore_index, device)
    painted = ConfusionMatrix(len(ds.class_names), ds.ignore_index, device)
    n = min(len(ds), cfg.eval.max_images or len(ds))
    t0 = time.time()
    panels = []
    for i in tqdm(range(n), desc=f"evaluate {ds.name}", unit="img", disable=not progress, leave=False):
        s = ds[i]
        pred = predict(model, s.image, classes, settings, out_size=tuple(s.label.shape))
        label = torch.from_numpy(s.label).to(device)
        cm.update(pred, label)
        painted.update(torch.full_like(label, painting_class(model, s.image, classes, ds.has_background)), label)
        if save_predictions is not None:
            ds.save_prediction(save_predictions / ds.name / f"{s.id}.png", pred.cpu().numpy())
        if out_dir is not None and len(panels) < cfg.eval.panels:
            panels.append(_panel(model, s, pred, classes, settings, ds, out_dir, missing or {}))
    dt = time.time() - t0
    res = cm.results()
    return {"dataset": ds.name, "images": n, "seconds": round(dt, 2), "images_per_s": round(n / dt, 2) if dt else None,
            "mIoU": 100 * res.miou, "aAcc": 100 * res.aacc, "mAcc": 100 * res.macc,
            "painting_mIoU": 100 * painted.results().miou,
            "per_class_iou": {c: (None if np.isnan(v) else 100 * float(v)) for c, v in zip(ds.class_names, res.iou)},
            "settings": settings.__dict__, "panels": panels}


def painting_class(model, image: np.ndarray, classes: torch.Tensor, has_background: bool) -> int:
    """Why: the reference row that shows what grouping adds: the label of the image's top class by its pooled
    embedding (the classification view: shorter side to the model's size, centre crop), to paint over the whole image
    (never background: a painting has no background pixel)."""
    from cocu_core.evaluation.classification import classify

    top = int(classify(model, [image], classes, crop_pct=1.0)[0, 0])
    return top + 1 if has_background else top


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
    from cocu_core.evaluation.segmentation import concept_maps

    names = class_lists(ds)
    wanted = [c for c in concepts if c in names][:4]
    groups, maps = concept_maps(model, s.image, classes[[names.index(c) for c in wanted]], settings)
    return panel_png(path, s.image, s.label, pred.cpu().numpy(), groups.cpu().numpy(),
                     dict(zip(wanted, maps.cpu().numpy())), list(ds.class_names), ds.palette, title,
                     ignore_index=ds.ignore_index)


def evaluate_classification(model, cfg: PipelineConfig, device: torch.device) -> dict[str, Any]:
    """Why: zero-shot top-1/top-5 on the toy world (largest thing) and on an ImageNet-style folder if configured."""
    from cocu_core.evaluation.classification import classify, topk_accuracy
    from cocu_core.evaluation.segmentation import class_embeddings

    out: dict[str, Any] = {}
    templates = get_templates(cfg.eval.classification_templates)
    views = []
    if "toy" in cfg.eval.datasets:
        views.append(("toy", ToyClassification(dataset_root(cfg, "toy")), 1.0))
    if cfg.eval.imagenet_root:
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


