"""Confusion-matrix accumulation: the on-device torch ``ConfusionMatrix`` vs a plain numpy ``bincount``
loop per image, side by side on the same maps; results must be identical.

Maps are random 512x512 label/prediction pairs with 21 classes (VOC-like) and ~5% ignored pixels,
already on the device as an evaluation loop has them (predictions come off the model there). The
numpy path pays the device -> host copy per image, as it would in a real loop. Run:
    .venv/bin/python benchmarks/bench_eval.py [--images 200] [--size 512] [--classes 21] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cocu_core.evaluation.metrics import ConfusionMatrix, metrics_from_matrix  # noqa: E402


def numpy_loop(preds: list[torch.Tensor], labels: list[torch.Tensor], n: int, ignore: int) -> np.ndarray:
    """Why: the baseline: copy each map to the host and bincount its valid pixels there."""
    mat = np.zeros((n + 1, n + 1), np.int64)
    for p_t, y_t in zip(preds, labels):
        p = p_t.cpu().numpy().ravel().astype(np.int64)
        y = y_t.cpu().numpy().ravel().astype(np.int64)
        keep = y != ignore
        p, y = p[keep], y[keep]
        p = np.where((p >= 0) & (p < n), p, n)
        y = np.where((y >= 0) & (y < n), y, n)
        mat += np.bincount(y * (n + 1) + p, minlength=(n + 1) ** 2).reshape(n + 1, n + 1)
    return mat


def torch_accumulate(preds: list[torch.Tensor], labels: list[torch.Tensor], n: int, ignore: int,
                     device: torch.device) -> np.ndarray:
    cm = ConfusionMatrix(n, ignore, device)
    for p, y in zip(preds, labels):
        cm.update(p, y)
    return cm.matrix.cpu().numpy().reshape(n + 1, n + 1)  # .cpu() synchronises the device


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (numpy's bincount is single-threaded; 0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    n, ignore = args.classes, 255

    g = torch.Generator().manual_seed(0)
    labels, preds = [], []
    for _ in range(args.images):
        y = torch.randint(0, n, (args.size, args.size), generator=g)
        y[torch.rand(args.size, args.size, generator=g) < 0.05] = ignore
        p = torch.randint(0, n, (args.size, args.size), generator=g)
        labels.append(y.to(device))
        preds.append(p.to(device))

    torch_accumulate(preds[:2], labels[:2], n, ignore, device)  # warm-up (CUDA context, kernels)
    t_np, m_np = timed(lambda: numpy_loop(preds, labels, n, ignore), args.repeats)
    t_t, m_t = timed(lambda: torch_accumulate(preds, labels, n, ignore, device), args.repeats)

    assert np.array_equal(m_np, m_t), "torch and numpy confusion matrices differ"
    r_np, r_t = metrics_from_matrix(m_np), metrics_from_matrix(m_t)
    assert r_np.miou == r_t.miou and r_np.aacc == r_t.aacc and np.array_equal(r_np.iou, r_t.iou, equal_nan=True)

    mpix = args.images * args.size * args.size / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); {args.images} maps of {args.size}x{args.size}, {n} classes, "
          f"best of {args.repeats}")
    print(f"numpy bincount loop (host copy per image): {t_np:.3f} s  ({mpix / t_np:.0f} Mpx/s)")
    print(f"torch ConfusionMatrix on {device.type}:          {t_t:.3f} s  ({mpix / t_t:.0f} Mpx/s)")
    print(f"speed ratio numpy / torch: {t_np / t_t:.2f}x   identical matrices: yes   mIoU {100 * r_t.miou:.2f}")


if __name__ == "__main__":
    main()
