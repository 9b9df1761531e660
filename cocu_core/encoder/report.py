"""Zero-shot image->text retrieval on held-out pairs: evidence the curation encoder is not random."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


def retrieval_recall(img_emb: np.ndarray, captions: Sequence[str], txt_emb_of: Callable[[list[str]], np.ndarray],
                     ks: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Why: rank the *distinct* held-out captions per image, so duplicate captions are neither hits nor misses twice.

    `img_emb` rows are L2-normalised image embeddings; `captions[i]` is image i's caption.
    Chance level is k / number of distinct captions.
    """
    if len(img_emb) != len(captions):
        raise ValueError(f"{len(img_emb)} image embeddings but {len(captions)} captions")
    if len(captions) == 0:
        raise ValueError("no held-out pairs to evaluate")
    uniq = sorted(set(captions))
    pos = {c: i for i, c in enumerate(uniq)}
    txt = txt_emb_of(list(uniq))
    sims = img_emb.astype(np.float32) @ txt.astype(np.float32).T
    gt = np.array([pos[c] for c in captions])
    gt_score = sims[np.arange(len(gt)), gt]
    rank = (sims > gt_score[:, None]).sum(axis=1)  # 0 = best; ties count in the image's favour
    out: dict[str, Any] = {"n_pairs": int(len(captions)), "n_distinct_captions": len(uniq)}
    for k in ks:
        out[f"r@{k}"] = float(np.mean(rank < k))
        out[f"chance_r@{k}"] = float(min(1.0, k / len(uniq)))
    out["median_rank"] = float(np.median(rank) + 1)
    return out


def class_ranking(sims: np.ndarray, present: np.ndarray, k: int = 3) -> dict[str, Any]:
    """Why: how well image-text similarity alone ranks an image's classes bounds how precise curation can be.

    `sims` [n, C] image-to-class-prompt similarities; `present` [n, C] bool ground truth. Returns P@k and
    R@k of the k most similar classes, and P@k of a random ranking (the mean share of classes present).
    """
    sims, present = np.asarray(sims), np.asarray(present, bool)
    if sims.shape != present.shape or sims.ndim != 2 or len(sims) == 0:
        raise ValueError(f"need matching non-empty [n, C] arrays, got {sims.shape} and {present.shape}")
    k = min(k, sims.shape[1])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(present, top, axis=1).sum(axis=1)
    return {
        "n_images": int(len(sims)), "k": k, f"p@{k}": float(np.mean(hits / k)),
        f"r@{k}": float(np.mean(hits / np.maximum(present.sum(axis=1), 1))),
        f"chance_p@{k}": float(present.mean()),
    }


def format_report(rep: dict[str, Any], title: str = "") -> str:
    """Why: one readable block for `cocu encoder-report` and the flow log."""
    lines = [title] if title else []
    lines.append(f"held-out pairs: {rep['n_pairs']} ({rep['n_distinct_captions']} distinct captions)")
    for k in (1, 5):
        if f"r@{k}" in rep:
            lines.append(f"image->text R@{k}: {100 * rep[f'r@{k}']:5.1f}%   (chance {100 * rep[f'chance_r@{k}']:.1f}%)")
    lines.append(f"median rank of the true caption: {rep['median_rank']:.0f}")
    return "\n".join(lines)
