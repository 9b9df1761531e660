"""The paper's Table 3 in miniature: GroupViT trained per arm and seed on the toy world, evaluated on toy val.

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

import base64
import csv
import io
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cocu_core.config import TRAIN_VARIANTS, ConfigError, PipelineConfig, config_from_dict, fingerprint
from cocu_core.evaluation.datasets import get_dataset
from cocu_core.evaluation.roots import dataset_root
from cocu_core.evaluation.training_signal import format_training_signal
from cocu_core.io import (read_json, read_manifest, stage_is_current, write_bytes_atomic, write_json_atomic,
                          write_manifest)
from cocu_core.plot import save_line_plot
from cocu_core.stages.evaluate import evaluate_stage
from cocu_core.stages.semantic_gap import training_signal_stage
from cocu_core.stages.train import ARCHIVE_FOR, train_stage
from cocu_core.templates import get_templates
from cocu_core.toyworld.concepts import CONCEPTS

ABLATION_VERSION = 1
METRICS = (("mIoU", "mIoU"), ("stuff_mIoU", "stuff mIoU"), ("thing_mIoU", "thing mIoU"), ("top1", "zero-shot top-1"))
ARM_LABELS = {
    "baseline": "baseline: caption nouns (GroupViT)",
    "v1": "#1 language-driven + naive ranking + naive sampling",
    "v2": "#2 vision-driven + naive ranking + naive sampling",
    "v3": "#3 vision-driven + T2V ranking + naive sampling",
    "cocu": "#4 CoCu: vision-driven + T2V ranking + cluster sampling",
    "topk-release": "authors' release: top-3 CoCu concepts, no sampling",
    "oracle": "oracle: the image's ground-truth concepts",
}
MIN_MAP_AREA = 0.05  # a missing concept drawn in Figure 4 covers at least this fraction of the image


class AblationError(FileNotFoundError):
    """An input of the ablation is missing (a variant's archives, the toy world); the message says how to make it."""


def ablation_dir(cfg: PipelineConfig, out_dir: Optional[str | Path] = None) -> Path:
    """Why: one folder holds every run and the report, beside (never inside) the pipeline's own train folders."""
    return Path(out_dir) if out_dir else cfg.workpath / cfg.ablation.out


def run_dir(out: Path, arm: str, seed: int) -> Path:
    """Why: each (arm, seed) run has its own train and evaluate folders, so no run overwrites another."""
    return out / "runs" / arm / f"seed{seed}"


def arm_config(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """Why: every arm gets the same derived config (budget, seed, device); only the train variant differs.

    Evaluation panels are off in the runs: the ablation draws its own maps, baseline beside CoCu."""
    data = cfg.model_dump(mode="json")
    data["train"].update(seed=seed, epochs=cfg.ablation.epochs, device=cfg.ablation.device)
    data["eval"].update(device=cfg.ablation.device, panels=0, save_predictions=None, checkpoint=None)
    if "toy" not in data["eval"]["datasets"]:
        data["eval"]["datasets"] = ["toy"] + list(data["eval"]["datasets"])
    return config_from_dict(data, "<ablation>")


def split_arms(arms: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Why: an arm the installed trainer does not know yet (e.g. `oracle`) is reported as not available, not fatal."""
    ok = [a for a in arms if a in TRAIN_VARIANTS]
    missing = {a: f"train variant '{a}' is not available in this installation (cocu_core.config.TRAIN_VARIANTS)"
               for a in arms if a not in TRAIN_VARIANTS}
    return ok, missing


def needed_curations(arms: Sequence[str]) -> list[str]:
    """Why: the curation variants whose archives the arms read (the oracle builds its own from ground truth)."""
    out: list[str] = []
    for a in arms:
        v = ARCHIVE_FOR.get(a) if a != "oracle" else None
        if v and v not in out:
            out.append(v)
    return out


def check_inputs(cfg: PipelineConfig, arms: Sequence[str], config_name: str = "CONFIG") -> None:
    """Why: a missing input is one line naming the folder and the command that makes it, before any training."""
    if cfg.data.source != "toyworld":
        raise ConfigError("the ablation needs the toy world's ground truth (stuff/thing classes, missing concepts, "
                          f"oracle prompts); config '{cfg.name}' has data.source '{cfg.data.source}'")
    val = cfg.workpath / "toyworld" / "val"
    if not (val / "pairs.parquet").is_file():
        raise AblationError(f"no toy world val split in {val}; make it with: cocu run -c {config_name} "
                            "(or `cocu ablation -c ...`, which runs every stage it needs)")
    if not read_manifest(cfg.workpath / "download"):
        raise AblationError(f"no finished download in {cfg.workpath / 'download'}; make it with: cocu run -c "
                            f"{config_name} --only download (or `cocu ablation -c ...`)")
    for v in needed_curations(arms):
        d = cfg.workpath / "curate" / v
        shards = sorted(d.glob("shard_*")) if d.is_dir() else []
        if not shards or not all(read_manifest(s) for s in shards):
            users = [a for a in arms if a in needed_for(v)]
            raise AblationError(f"arm(s) {', '.join(users)} need the '{v}' concept archives in {d}; make them with: "
                                f"cocu run -c {config_name} --set curation.variant={v} (or `cocu ablation -c ...`, "
                                "which curates every variant the arms need)")


def needed_for(variant: str) -> list[str]:
    """Why: the arms that read one curation variant's archives, named when those archives are missing."""
    return [a for a, v in ARCHIVE_FOR.items() if v == variant and a != "oracle"]


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
    out: dict[str, Optional[float]] = {"mIoU": float(seg["mIoU"])}
    for kind in ("stuff", "thing"):
        out[f"{kind}_mIoU"] = _nanmean([v for c, v in iou.items() if kinds.get(c) == kind])
    cls = (results.get("classification") or {}).get("toy")
    out["top1"] = float(cls["top1"]) if cls else None
    return out


def aggregate(rows: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Why: per arm and metric, the mean and the spread over seeds (sample std, ddof 1; None with one seed)."""
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for key, _ in METRICS:
            vals = [r[key] for r in mine if r.get(key) is not None]
            entry[key] = {"mean": float(np.mean(vals)) if vals else None,
                          "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                          "n": len(vals), "values": [float(v) for v in vals]}
        out[arm] = entry
    return out


def _cell(m: dict[str, Any]) -> str:
    if m["mean"] is None:
        return "-"
    return f"{m['mean']:.1f}" + (f" ± {m['std']:.1f}" if m["std"] is not None else "")


def table_markdown(agg: dict[str, dict[str, Any]], unavailable: Optional[dict[str, str]] = None) -> str:
    """Why: the paper's Table 3 layout: a row per arm, mean ± std over seeds (%), seeds counted."""
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

    p = cfg.workpath / "toyworld" / "val" / "pairs.parquet"
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
             "cells are mean ± sample std over seeds, in %.", "", table, ""]
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
