"""Score curated concept archives against ground truth: precision/recall of the top-k concepts.

Vocabulary concepts are lemmas ("automobile", "brick wall"); ``to_class`` maps each to a benchmark
class (or None for concepts outside the benchmark, which count as false positives). Recall is also
reported on the *missing* concepts (present in the image, not named by its caption): the gap itself.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import numpy as np


def topk_classes(ranked: Sequence[str], k: int, to_class: Callable[[str], Optional[str]]) -> list[Optional[str]]:
    """Why: the top-k archive concepts, mapped to classes; synonyms of one class collapse to one hit."""
    return [to_class(c) for c in list(ranked)[:k]]


def gap_scores(
    ranked_archives: Sequence[Sequence[str]],
    ground_truth: Sequence[Iterable[str]],
    caption_classes: Sequence[Iterable[str]],
    to_class: Callable[[str], Optional[str]],
    k: int = 3,
) -> dict[str, float]:
    """Why: one row of the semantic-gap report for one curation method."""
    if not (len(ranked_archives) == len(ground_truth) == len(caption_classes)):
        raise ValueError(
            f"length mismatch: {len(ranked_archives)} archives, {len(ground_truth)} ground truths, "
            f"{len(caption_classes)} captions"
        )
    tp = n_pred = n_gt = miss_hit = n_miss = 0
    empty = 0
    for ranked, gt, cap in zip(ranked_archives, ground_truth, caption_classes):
        gt_set, cap_set = set(gt), set(cap)
        top = topk_classes(ranked, k, to_class)
        if not top:
            empty += 1
        hits = {c for c in top if c is not None and c in gt_set}
        # Duplicated classes among the top-k (two synonyms) count once as a hit, each extra as a miss.
        tp += len(hits)
        n_pred += len(top)
        n_gt += len(gt_set)
        missing = gt_set - cap_set
        miss_hit += len(hits & missing)
        n_miss += len(missing)
    return {
        "precision": tp / n_pred if n_pred else float("nan"),
        "recall": tp / n_gt if n_gt else float("nan"),
        "missing_recall": miss_hit / n_miss if n_miss else float("nan"),
        "empty_fraction": empty / max(len(ranked_archives), 1),
        "images": float(len(ranked_archives)),
    }


def format_gap_report(rows: dict[str, dict[str, float]], k: int = 3) -> str:
    """Why: the table printed by the CLI, the Prefect markdown artifact and closing notes."""
    head = f"| method | P@{k} | R@{k} | missing-concept R@{k} | empty archives |\n|---|---|---|---|---|"
    body = [
        f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['missing_recall']:.3f} | {100 * r['empty_fraction']:.1f}% |"
        for name, r in rows.items()
    ]
    return "\n".join([head, *body])


def mean_or_nan(values: Sequence[float]) -> float:
    """Why: tiny helper so reports never divide by zero."""
    return float(np.mean(values)) if len(values) else float("nan")
