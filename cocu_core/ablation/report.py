"""The ablation's report: per-arm metrics aggregated over seeds (Table 3), the loss curves (Figure 3a), the
missing-concept maps (Figure 4), the training-signal section and the markdown that holds them."""

from __future__ import annotations

import base64
import csv
import io
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cocu_core.config import PipelineConfig
from cocu_core.evaluation.datasets import get_dataset
from cocu_core.evaluation.roots import dataset_root
from cocu_core.evaluation.training_signal import format_training_signal
from cocu_core.io import (write_bytes_atomic)
from cocu_core.plot import save_line_plot
from cocu_core.stages.semantic_gap import training_signal_stage
from cocu_core.templates import get_templates
from cocu_core.toyworld.concepts import CONCEPTS

from cocu_core.ablation.plan import ARM_LABELS, arm_config, run_dir
from cocu_core.layout import toy_split


METRICS = (("mIoU", "mIoU"), ("painting_mIoU", "painting mIoU"), ("stuff_mIoU", "stuff mIoU"),
           ("thing_mIoU", "thing mIoU"), ("top1", "zero-shot top-1"))


MIN_MAP_AREA = 0.05  # a missing concept drawn in Figure 4 covers at least this fraction of the image


def class_kinds() -> dict[str, str]:
    """Why: toy class name -> 'stuff' or 'thing', the split of the paper's stuff/thing columns."""
    return {c.name: c.kind for c in CONCEPTS}


def _nanmean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def run_metrics(results: dict[str, Any], kinds: Optional[dict[str, str]] = None) -> dict[str, Optional[float]]:
    """Why: one run's table cells from its evaluate results: mIoU, mean IoU over stuff and over thing classes
    (classes absent from truth and prediction, IoU None, are left out as mmseg does), toy zero-shot top-1."""
    kinds = kinds or class_kinds()
    seg = results["segmentation"]["toy"]
    iou = seg["per_class_iou"]
    out: dict[str, Optional[float]] = {"mIoU": float(seg["mIoU"]),
                                       # the same model's pooled top class painted over the image: what grouping adds
                                       "painting_mIoU": float(seg["painting_mIoU"]) if "painting_mIoU" in seg else None}
    for kind in ("stuff", "thing"):
        out[f"{kind}_mIoU"] = _nanmean([v for c, v in iou.items() if kinds.get(c) == kind])
    cls = (results.get("classification") or {}).get("toy")
    out["top1"] = float(cls["top1"]) if cls else None
    return out


def aggregate(rows: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Why: per arm and metric, the mean and the spread over seeds: sample std (ddof 1) and the standard error of
    the mean (std / sqrt(seeds)); None with one seed."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for key, _ in METRICS:
            vals = [r[key] for r in mine if r.get(key) is not None]
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            entry[key] = {"mean": float(np.mean(vals)) if vals else None, "std": std,
                          "se": std / math.sqrt(len(vals)) if std is not None else None,
                          "n": len(vals), "values": [float(v) for v in vals]}
        out[arm] = entry
    return out


def _cell(m: dict[str, Any]) -> str:
    if m["mean"] is None:
        return "-"
    return f"{m['mean']:.1f}" + (f" ± {m['se']:.1f}" if m.get("se") is not None else "")


def table_markdown(agg: dict[str, dict[str, Any]], unavailable: Optional[dict[str, str]] = None) -> str:
    """Why: the paper's Table 3 layout: a row per arm, mean ± standard error over seeds (%), seeds counted."""
    head = "| arm | " + " | ".join(label for _, label in METRICS) + " | seeds |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for arm, e in agg.items():
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(_cell(e[k]) for k, _ in METRICS)
                     + f" | {len(e['seeds'])} |")
    for arm in unavailable or {}:
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join("not available" for _ in METRICS) + " | 0 |")
    return "\n".join(lines)


def read_curve(path: Path) -> dict[str, list[float]]:
    """Why: a run's loss curve CSV (written by the trainer) as columns."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return {k: [float(r[k]) for r in rows] for k in ("step", "loss", "loss_image_text", "loss_multi_label")}


def mean_curve(curves: Sequence[dict[str, list[float]]], key: str) -> tuple[list[float], list[float]]:
    """Why: the seeds' curves averaged step by step (same budget: same logged steps; extra steps are dropped)."""
    n = min(len(c["step"]) for c in curves)
    return curves[0]["step"][:n], [float(np.mean([c[key][i] for c in curves])) for i in range(n)]


def loss_plot(out: Path, arms: Sequence[str], seeds: Sequence[int], path: Path) -> Optional[Path]:
    """Why: the paper's Figure 3a: the total and image-text training losses of the chosen arms, mean over seeds."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for arm in arms:
        curves = [read_curve(f) for s in seeds if (f := run_dir(out, arm, s) / "train" / "loss_curve.csv").is_file()]
        curves = [c for c in curves if c["step"]]
        if not curves:
            continue
        series[f"{arm} total"] = mean_curve(curves, "loss")
        series[f"{arm} image-text"] = mean_curve(curves, "loss_image_text")
    if not series:
        return None
    save_line_plot(path, series, f"training loss, mean over {len(seeds)} seed(s)", "step", "loss")
    return path


def pick_map_images(ds, missing: dict[str, list[str]], n: int) -> list[tuple[int, list[str]]]:
    """Why: Figure 4's images: val images with a concept visible in the mask (>= MIN_MAP_AREA) that the caption
    leaves out; up to two such concepts each, largest first."""
    names = list(ds.class_names)
    picked: list[tuple[int, list[str]]] = []
    for i in range(len(ds)):
        if len(picked) >= n:
            break
        s = ds[i]
        valid = s.label[s.label != ds.ignore_index]
        area = {c: float(np.mean(valid == names.index(c))) for c in missing.get(s.id, []) if c in names} if valid.size else {}
        big = sorted((c for c, a in area.items() if a >= MIN_MAP_AREA), key=lambda c: -area[c])[:2]
        if big:
            picked.append((i, big))
    return picked


def _stack_png(parts: Sequence[Path], path: Path) -> Path:
    """Why: one picture per image with a row per model (baseline above CoCu), each row a full evaluation panel."""
    from PIL import Image

    imgs = [Image.open(p).convert("RGB") for p in parts]
    canvas = Image.new("RGB", (max(i.width for i in imgs), sum(i.height for i in imgs)), "white")
    y = 0
    for im in imgs:
        canvas.paste(im, (0, y))
        y += im.height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return path


def missing_concept_maps(cfg: PipelineConfig, out: Path, arms: Sequence[str], seed: int, n: int,
                         log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Why: the paper's Figure 4: where each arm's model finds concepts that the image's caption never named."""
    import torch

    from cocu_core.evaluation.segmentation import class_embeddings, predict
    from cocu_core.evaluation.zero_shot import concept_panel, missing_concepts, settings_for
    from cocu_core.train.checkpoint import load_model
    from cocu_core.train.distributed import resolve_device

    arms = [a for a in arms if (run_dir(out, a, seed) / "train" / "final.pt").is_file()]
    if not arms or n <= 0:
        return []
    c = arm_config(cfg, seed)
    ds = get_dataset("toy", dataset_root(c, "toy"))
    picked = pick_map_images(ds, missing_concepts(c, "toy"), n)
    captions = _val_captions(c)
    device = resolve_device(cfg.ablation.device)
    settings = settings_for(c, ds)
    rows_dir = out / "maps" / "rows"
    shutil.rmtree(out / "maps", ignore_errors=True)
    with torch.no_grad():
        for arm in arms:
            model = load_model(run_dir(out, arm, seed) / "train" / "final.pt", device)
            classes = class_embeddings(model, list(ds.class_names), get_templates(c.eval.templates), device)
            for i, concepts in picked:
                s = ds[i]
                pred = predict(model, s.image, classes, settings, out_size=tuple(s.label.shape))
                concept_panel(model, s, pred, classes, settings, ds, rows_dir / f"{s.id}_{arm}.png", concepts,
                              f"{arm} (seed {seed}), toy {s.id}: caption '{captions.get(s.id, '')}'")
    figures = []
    for i, concepts in picked:
        sid = ds[i].id
        path = _stack_png([rows_dir / f"{sid}_{arm}.png" for arm in arms], out / "maps" / f"{sid}.png")
        figures.append({"image": sid, "concepts": concepts, "arms": list(arms), "path": str(path)})
    shutil.rmtree(rows_dir, ignore_errors=True)
    log(f"ablation: missing-concept maps of {len(figures)} val image(s) for {', '.join(arms)}")
    return figures


def _val_captions(cfg: PipelineConfig) -> dict[str, str]:
    import pyarrow.parquet as pq

    p = toy_split(cfg, "val") / "pairs.parquet"
    return {r["key"]: r["caption"] for r in pq.read_table(p, columns=["key", "caption"]).to_pylist()}


def training_signal_section(cfg: PipelineConfig, out: Path, arms: Sequence[str], seed: int) -> tuple[Optional[str], str]:
    """Why: what each arm's training prompts actually contain over the ablation's budget (issue 13 point 2), from
    the module that measures it; returns (markdown table, "")."""
    rows, _ = training_signal_stage(arm_config(cfg, seed), out_dir=out / "training_signal", arms=list(arms))
    return (format_training_signal(rows) + f"\n\nReplayed for seed {seed} over {cfg.ablation.epochs} epoch(s)"
            + (f", capped at {cfg.train.max_steps} steps" if cfg.train.max_steps else "") + "."), ""


def _png_md(path: Path, title: str, out: Path) -> str:
    return f"![{title}]({path.relative_to(out).as_posix()})"


def embedded_report(out: Path) -> str:
    """Why: the Prefect UI shows a PNG only when it is inside the markdown: report.md with its images inlined."""
    import re

    def inline(m: "re.Match[str]") -> str:
        f = out / m.group(2)
        if not f.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, (out / "report.md").read_text())


def ordering_note(agg: dict[str, dict[str, Any]]) -> list[str]:
    """Why: the acceptance questions answered from the numbers themselves: is CoCu above the baseline by more than
    the seeds' spread, and below the oracle?"""
    lines = []

    def m(arm: str, key: str = "mIoU") -> Optional[dict[str, Any]]:
        return agg.get(arm, {}).get(key)

    b, c, o = m("baseline"), m("cocu"), m("oracle")
    if b and c and b["mean"] is not None and c["mean"] is not None:
        spread = max(x["std"] or 0.0 for x in (b, c))
        gap = c["mean"] - b["mean"]
        verdict = "more than" if gap > spread else "not more than"
        lines.append(f"- CoCu − baseline mIoU: {gap:+.2f} points; the larger seed std of the two is {spread:.2f}: "
                     f"{verdict} the seeds' spread.")
    for arm in ("cocu", "oracle"):  # does grouping add anything beyond painting the image's top class?
        x, p = m(arm), m(arm, "painting_mIoU")
        if x and p and x["mean"] is not None and p["mean"] is not None:
            gap, se = x["mean"] - p["mean"], max(x.get("se") or 0.0, p.get("se") or 0.0)
            lines.append(f"- {arm} − its painting row (top class over the whole image): {gap:+.2f} points; the larger "
                         f"standard error of the two is {se:.2f}: "
                         f"{'above it by more than that' if gap > se else 'not above it by more than that'}.")
    if c and o and c["mean"] is not None and o["mean"] is not None:
        lines.append(f"- oracle − CoCu mIoU: {o['mean'] - c['mean']:+.2f} points "
                     f"({'CoCu below the oracle' if o['mean'] > c['mean'] else 'CoCu not below the oracle'}).")
    order = sorted((a for a in agg if agg[a]["mIoU"]["mean"] is not None), key=lambda a: -agg[a]["mIoU"]["mean"])
    if order:
        lines.append("- arms by mean mIoU: " + " > ".join(f"{a} ({agg[a]['mIoU']['mean']:.1f})" for a in order))
    return lines


def report_markdown(cfg: PipelineConfig, out: Path, table: str, agg: dict[str, dict[str, Any]],
                    curve: Optional[Path], figures: Sequence[dict[str, Any]], signal: tuple[Optional[str], str]) -> str:
    """Why: the table, Figure 3a, Figure 4 and the training-signal table in one page, images linked beside it."""
    a = cfg.ablation
    lines = [f"# Ablation '{cfg.name}': Table 3 in miniature", "",
             f"Model `{cfg.train.model}`, {a.epochs} epoch(s) per arm"
             + (f" (capped at train.max_steps {cfg.train.max_steps})" if cfg.train.max_steps else "")
             + f", batch {cfg.train.batch_size}, seeds {a.seeds}; every arm starts from the same initialisation and "
             "sees the same images in the same order for a given seed. Evaluated on the toy world's val split "
             "(mIoU over 16 classes; stuff and thing columns are the mean IoU of the 8 stuff and 8 thing classes); "
             "cells are mean ± standard error over seeds (sample std / sqrt(seeds)), in %; the painting column paints each "
             "image's top class by the pooled embedding over the whole image (no grouping).", "", table, ""]
    lines += ordering_note(agg) + [""]
    lines += ["## What training sees", ""]
    lines += [signal[0] if signal[0] else f"_{signal[1]}_", ""]
    lines += ["## Training loss (Figure 3a)", ""]
    lines += [_png_md(curve, "training loss", out) if curve else "_no loss curves of the map arms_", ""]
    lines += ["## Concepts missing from the captions (Figure 4)", "",
              "Each row: image, ground truth, prediction, groups, then the per-pixel cosine similarity of the "
              "model's groups (through the soft assignment) to the text embedding of a concept that is visible but "
              "not named in the caption.", ""]
    if not figures:
        lines += ["_no map figures (no trained map arm, or no val image with a large missing concept)_", ""]
    for f in figures:
        lines += [f"### {f['image']}: {', '.join(f['concepts'])} ({' above '.join(f['arms'])})", "",
                  _png_md(Path(f["path"]), f["image"], out), ""]
    lines += [f"Runs and per-run evaluations: `{out / 'runs'}`."]
    return "\n".join(lines) + "\n"
