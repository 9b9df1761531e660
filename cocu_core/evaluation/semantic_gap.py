"""Score curated concept archives against ground truth: precision/recall of the top-k concepts.

Vocabulary concepts are lemmas ("automobile", "brick wall"); ``to_class`` maps each to a benchmark
class (or None for concepts outside the benchmark, which count as false positives). Recall is also
reported on the *missing* concepts (present in the image, not named by its caption): the gap itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.config import PipelineConfig
from cocu_core.curation.data import CurationData
from cocu_core.toyworld.concepts import BY_NAME, CLASS_NAMES, LEMMA_TO_CONCEPT
from cocu_core.toyworld.generate import toy_ground_truth


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


def salience_recall(sim: np.ndarray, present: Sequence[Sequence[int]], areas: Sequence[Sequence[float]],
                    kinds: Sequence[str], k: int = 3, bins: int = 4) -> list[dict]:
    """Why: CLIP's semantic bias, measured: per kind and area quartile of the concepts present in the images, the
    share of them among their image's top k classes by image->class similarity; an encoder trained on captions that
    name salient concepts ranks large concepts high and small ones low. `sim` [images, classes]; `present[i]`, `areas[i]`
    the class indices present in image i and their pixel shares; `kinds[c]` 'thing' or 'stuff'."""
    top = np.argsort(-np.asarray(sim, np.float64), axis=1, kind="stable")[:, :k]
    in_top = np.zeros(np.shape(sim), bool)
    np.put_along_axis(in_top, top, True, axis=1)
    img = np.repeat(np.arange(len(present)), [len(p) for p in present])
    cls = np.fromiter((c for p in present for c in p), np.int64, len(img))
    area = np.fromiter((a for p in areas for a in p), np.float64, len(img))
    hit, kind = in_top[img, cls], np.asarray(kinds)[cls] if len(cls) else np.array([], str)
    rows = []
    for kd in ("thing", "stuff"):
        sel = kind == kd
        if not sel.any():
            continue
        edges = np.quantile(area[sel], np.linspace(0, 1, bins + 1))
        q = np.clip(np.searchsorted(edges, area[sel], side="right") - 1, 0, bins - 1)
        for b in range(bins):
            m = q == b
            rows.append({"kind": kd, "quartile": b + 1, "area_from": float(edges[b]), "area_to": float(edges[b + 1]),
                         "concepts": int(m.sum()), f"recall@{k}": float(hit[sel][m].mean()) if m.any() else float("nan")})
    return rows


def format_salience(rows: list[dict], k: int = 3) -> str:
    """Why: the bias table beside the gap table: recall of present concepts by their size."""
    head = (f"| kind | area quartile | area share | present concepts | in the image's top {k} classes |\n"
            "|---|---|---|---|---|")
    body = [f"| {r['kind']} | {r['quartile']} | {r['area_from']:.3f}-{r['area_to']:.3f} | {r['concepts']} | "
            f"{r[f'recall@{k}']:.3f} |" for r in rows]
    return "\n".join([head, *body])


def salience_report(data: CurationData, toy_split_dir: Path, k: int = 3) -> list[dict]:
    """Why: the curation encoder's bias on the toy train images: their embeddings against the toy classes' concept
    embeddings (the curation's own prompts), recall@k of present classes by area quartile."""
    t = pq.read_table(toy_split_dir / "pairs.parquet", columns=["key", "concepts", "areas"]).to_pylist()
    truth = {r["key"]: r for r in t}
    classes = [c for c in CLASS_NAMES if c != "background" and c in data.concepts]
    col = {c: i for i, c in enumerate(classes)}
    rows = np.flatnonzero(np.array([sid in truth for sid in data.sample_ids]))
    if not len(rows) or not classes:
        return []
    img = np.asarray(data.img_emb[rows], np.float32)
    txt = np.asarray(data.concept_emb[[data.concepts.index(c) for c in classes]], np.float32)
    present, areas = [], []
    for i in rows:
        r = truth[data.sample_ids[i]]
        pairs = [(col[c], a) for c, a in zip(r["concepts"], r["areas"] or []) if c in col]
        present.append([c for c, _ in pairs])
        areas.append([a for _, a in pairs])
    return salience_recall(img @ txt.T, present, areas, [BY_NAME[c].kind for c in classes], k)


def mean_or_nan(values: Sequence[float]) -> float:
    """Why: tiny helper so reports never divide by zero."""
    return float(np.mean(values)) if len(values) else float("nan")


def ranked_concepts(table: pa.Table, ranking: str) -> list[list[str]]:
    """Why: reorder each archive by naive or T2V score so one curation run scores both rankings."""
    col = "t2v_scores" if ranking == "t2v" else "naive_scores"
    out = []
    for names, scores, ids in zip(table.column("concepts").to_pylist(), table.column(col).to_pylist(),
                                  table.column("concept_ids").to_pylist()):
        order = sorted(range(len(names)), key=lambda i: (-scores[i], ids[i]))
        out.append([names[i] for i in order])
    return out


GAP_METHODS: tuple[tuple[str, str, str], ...] = (
    ("caption only", "baseline", "naive"),
    ("language-driven + naive", "v1", "naive"),
    ("language-driven + T2V", "v1", "t2v"),
    ("vision-driven + naive", "v2", "naive"),
    ("vision-driven + T2V", "v2", "t2v"),
)


def semantic_gap_report(data: CurationData, cfg: PipelineConfig, ground_truth: dict[str, list[str]],
                        named: dict[str, list[str]], image_index=None, caption_index=None,
                        k: int = 3, to_class: Optional[Callable[[str], Optional[str]]] = None) -> dict[str, dict]:
    """Why: P/R of the top-k archive concepts vs ground truth for each expansion x ranking method."""
    from cocu_core.curation import curate  # torch (the batched k-means)

    to_class = to_class or LEMMA_TO_CONCEPT.get
    rows = np.flatnonzero(np.array([s in ground_truth for s in data.sample_ids]))
    gt = [ground_truth[data.sample_ids[i]] for i in rows]
    cap = [named[data.sample_ids[i]] for i in rows]
    tables: dict[str, pa.Table] = {}
    out: dict[str, dict] = {}
    for name, variant, ranking in GAP_METHODS:
        if variant not in tables:
            ccfg = cfg.curation.model_copy(update={"variant": variant})
            tables[variant] = curate(data.keys, data.captions, (data.offsets, data.ids), data.img_emb, data.cap_emb,
                                     data.concept_emb, ccfg, image_index, caption_index,
                                     concept_names=data.concepts, query_rows=rows)
        out[name] = gap_scores(ranked_concepts(tables[variant], ranking), gt, cap, to_class, k)
    return out


def examples_markdown(archive_dir: Path, toy_split_dir: Path, data: CurationData, n: int = 6,
                      top: int = 5) -> str:
    """Why: a few toy images with caption, ground truth and top curated concepts, for the Prefect UI."""
    import base64

    gt, _ = toy_ground_truth(toy_split_dir)
    files = dict(zip(*[pq.read_table(toy_split_dir / "pairs.parquet", columns=["key", "file"]).column(c).to_pylist()
                       for c in ("key", "file")]))
    archives = sorted(archive_dir.glob("archive_*.parquet"))
    if not archives:
        return "_no archives_"
    table = pq.read_table(archives[0]).slice(0, n)
    key_to_sid = dict(zip(data.keys, data.sample_ids))
    lines = ["| image | caption | ground truth | top curated concepts |", "|---|---|---|---|"]
    for r in table.to_pylist():
        sid = key_to_sid.get(r["key"], r["key"])
        img = ""
        if sid in files and (toy_split_dir / files[sid]).is_file():
            b64 = base64.b64encode((toy_split_dir / files[sid]).read_bytes()).decode()
            img = f"![{sid}](data:image/jpeg;base64,{b64})"
        lines.append(f"| {img} | {r['caption']} | {', '.join(gt.get(sid, []))} | {', '.join(r['concepts'][:top])} |")
    return "\n".join(lines)
