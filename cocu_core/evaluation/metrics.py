"""Segmentation metrics as mmsegmentation computes them, accumulated on the model's device.

mmseg (``mmseg/core/evaluation/metrics.py``, ``intersect_and_union`` + ``total_area_to_metrics``,
averaged with ``np.nanmean`` in ``CustomDataset.evaluate``):

- pixels whose label is ``ignore_index`` are dropped; ``histc`` over ``[0, n)`` then leaves out any
  other label or prediction outside the class range (it is counted on neither side of that class);
- IoU_c = I_c / (P_c + G_c - I_c): NaN for a class absent from both prediction and ground truth,
  0 for a class predicted but absent from the ground truth;
- Acc_c = I_c / G_c (NaN when absent from the ground truth); aAcc = sum I / sum G;
- mIoU = nanmean(IoU) and mAcc = nanmean(Acc): over all classes, background included where the
  dataset has it, skipping only the NaNs.

One (n+1) x (n+1) matrix holds it all: row/column n collects out-of-range labels/predictions, so
G_c (row sums) still counts a pixel predicted out of range and P_c (column sums) a pixel whose label
is out of range but not ignored, exactly as mmseg's separate histograms do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class SegMetrics:
    """Results over a dataset, as fractions in [0, 1] (mmseg reports them x100)."""

    miou: float
    macc: float
    aacc: float
    iou: np.ndarray  # (n,) float64, NaN where the class is in neither prediction nor ground truth
    acc: np.ndarray  # (n,) float64, NaN where the class is not in the ground truth
    confusion: np.ndarray  # (n, n) int64, rows = ground truth, columns = prediction
    pixels: int  # labelled pixels counted (ignore excluded)

    def to_dict(self, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Why: one JSON-ready record (NaN -> None) for reports and manifests, per-class rows named."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise ValueError(f"{len(names)} class names for {len(self.iou)} classes")

        def num(x: float) -> Optional[float]:
            return None if math.isnan(x) else float(x)

        return {
            "mIoU": num(self.miou),
            "mAcc": num(self.macc),
            "aAcc": num(self.aacc),
            "pixels": self.pixels,
            "per_class": {n: {"IoU": num(i), "Acc": num(a)} for n, i, a in zip(names, self.iou, self.acc)},
        }

    def table(self, class_names: Sequence[str]) -> str:
        """Why: the per-class table mmseg prints, for logs and closing notes."""
        lines = [f"{'class':<24} {'IoU':>7} {'Acc':>7}"]
        for n, i, a in zip(class_names, self.iou, self.acc):
            lines.append(f"{n[:24]:<24} {_pct(i):>7} {_pct(a):>7}")
        lines.append(f"{'mIoU / mAcc / aAcc':<24} {_pct(self.miou):>7} {_pct(self.macc):>7} {_pct(self.aacc):>7}")
        return "\n".join(lines)


def _pct(x: float) -> str:
    return "nan" if math.isnan(x) else f"{100 * x:.2f}"


def metrics_from_matrix(mat: np.ndarray) -> SegMetrics:
    """Why: the mmseg formulas on an (n+1) x (n+1) count matrix whose last row/column is 'out of range'."""
    m = np.asarray(mat, np.int64)
    n = m.shape[0] - 1
    inter = np.diag(m)[:n].astype(np.float64)
    area_label = m[:n, :].sum(1).astype(np.float64)
    area_pred = m[:, :n].sum(0).astype(np.float64)
    union = area_pred + area_label - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
        acc = np.where(area_label > 0, inter / np.where(area_label > 0, area_label, 1), np.nan)
    total = area_label.sum()
    aacc = float(inter.sum() / total) if total > 0 else float("nan")
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    macc = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    return SegMetrics(miou, macc, aacc, iou, acc, m[:n, :n].copy(), int(m[:n, :].sum()))


class ConfusionMatrix:
    """Pixel counts (ground truth x prediction) summed over images on the model's device.

    ``update`` costs one ``bincount`` over ``label * (n+1) + pred`` (ignored pixels land in spare bins,
    so no boolean indexing and no host sync of its own);
    ``results`` copies the small matrix to the host once. ``matrix`` is the raw (n+1)^2 tensor, for an
    all-reduce across ranks before ``results``.
    """

    def __init__(self, n_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu") -> None:
        if n_classes < 1:
            raise ValueError(f"n_classes must be positive, got {n_classes}")
        self.n_classes = int(n_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device)
        self.matrix = torch.zeros((self.n_classes + 1) ** 2, dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        """Why: reuse one accumulator across datasets."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> None:
        """Why: add one image's (or a batch's) pixels; shapes must match (predictions at the label's size)."""
        p = torch.as_tensor(pred, device=self.device)
        y = torch.as_tensor(label, device=self.device)
        if p.shape != y.shape:
            raise ValueError(f"prediction shape {tuple(p.shape)} != label shape {tuple(y.shape)}; "
                             "resize predictions to the label's size first")
        if p.is_floating_point() or y.is_floating_point():
            raise ValueError("pred and label must hold integer class ids (take argmax of logits first)")
        n, n1 = self.n_classes, self.n_classes + 1
        p = p.reshape(-1).to(torch.int32)  # int32 halves memory traffic; ids stay far below 2**31 / n1
        y = y.reshape(-1).to(torch.int32)
        pc = p.clamp(-1, n)
        pc.masked_fill_(pc < 0, n)  # predictions outside [0, n) -> column n
        yc = y.clamp(-1, n)
        yc.masked_fill_(yc < 0, n)  # labels outside [0, n) but not ignored -> row n
        yc.masked_fill_(y == self.ignore_index, n1)  # ignored -> row n+1: spare bins, dropped below
        counts = torch.bincount(yc * n1 + pc, minlength=n1 * n1 + n1)
        self.matrix += counts[: n1 * n1]

    def merge(self, other: "ConfusionMatrix") -> None:
        """Why: sum accumulators from several workers or devices."""
        if other.n_classes != self.n_classes:
            raise ValueError(f"cannot merge {other.n_classes}-class counts into {self.n_classes}-class counts")
        self.matrix += other.matrix.to(self.device)

    def results(self) -> SegMetrics:
        """Why: mIoU, per-class IoU, aAcc and mAcc exactly as mmseg's eval_metrics + nanmean."""
        n1 = self.n_classes + 1
        return metrics_from_matrix(self.matrix.detach().cpu().numpy().reshape(n1, n1))
