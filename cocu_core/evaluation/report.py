"""The evaluation's tables and report: the paper's Table 1 layout, per-class IoU, and the markdown report."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

import numpy as np


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


def report_markdown(label: str, results: dict[str, Any], cls: dict[str, Any], table: str, out_dir: Path) -> str:
    """Why: the whole evaluation (table, classification, per-class IoU, panels embedded) for people and the UI."""
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
