"""What each stage shows in the Prefect UI: its table artifact, and the markdown reports (pictures embedded).

Why here: the only per-stage code left in `flows/`; a stage's report dict (what its `run` returns) is rendered
by `REPORT[name](cfg, rep, seconds)` after the generic task ran it. Artifact keys are `<config name>-<key>`.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable, Optional

import pyarrow.parquet as pq
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cocu_core.config import PipelineConfig
from cocu_core.encoder.toy_model import TOY_MODEL
from cocu_core.layout import stage_dir
from cocu_core.stages.download import report_rows


def artifact_key(cfg: PipelineConfig, name: str) -> str:
    """Why: artifact keys must be lowercase letters, digits and dashes; one key per run name and stage."""
    return "".join(ch if ch.isalnum() else "-" for ch in f"{cfg.name}-{name}".lower()).strip("-")


def fmt(v: Any) -> Any:
    """Why: table cells are plain scalars; floats rounded so tables stay readable."""
    return round(v, 4) if isinstance(v, float) else (v if isinstance(v, (int, str, type(None))) else str(v))


def publish_table(cfg: PipelineConfig, stage: str, rows: list[dict[str, Any]], description: str) -> None:
    """Why: every stage shows its counts, timing and cache hit as a table artifact."""
    create_table_artifact(key=artifact_key(cfg, stage), table=[{k: fmt(v) for k, v in r.items()} for r in rows],
                          description=description)


def publish_markdown(cfg: PipelineConfig, name: str, markdown: str, description: str = "") -> None:
    """Why: reports (with images embedded as data URIs) for people reading the Prefect UI."""
    create_markdown_artifact(key=artifact_key(cfg, name), markdown=markdown, description=description or None)


def png_markdown(path: Path, title: str) -> str:
    """Why: the UI shows a PNG only when it is embedded in the markdown itself."""
    if not path.is_file():
        return f"_{path.name} not written_"
    return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def item_rows(rep: dict[str, Any], keys: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Why: a flat report dict as (item, value) rows, with the cache outcome last."""
    rows = [{"item": k, "value": rep[k]} for k in (keys or list(rep)) if k in rep and k != "cached"
            and not isinstance(rep[k], (dict, list))]
    rows.append({"item": "cache", "value": "hit" if rep.get("cached") else "computed"})
    return rows


def hit(rep: dict[str, Any]) -> str:
    return "cache hit" if rep.get("cached") else "computed"


def toyworld(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    gap = pq.read_table(stage_dir(cfg, "toyworld") / "gap.parquet").to_pylist()
    publish_table(cfg, "toyworld-gap", gap,
                  f"Semantic gap of the toy world's train+val captions ({hit(rep)}, {secs:.1f}s)")


def download(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    publish_table(cfg, "download", report_rows(rep),
                  f"img2dataset download: {rep['success']}/{rep['input']} pairs ({hit(rep)}, {secs:.1f}s)")


def encoder(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    if "report" in rep:  # the toy encoder was trained (or its training reused)
        r = rep["report"]
        rows = item_rows({**{k: r[k] for k in ("r@1", "r@5", "chance_r@1", "chance_r@5", "median_rank", "n_pairs",
                                              "first_loss", "final_loss", "train_seconds", "steps") if k in r},
                          "cached": rep["cached"]})
        publish_table(cfg, "encoder", rows, f"{TOY_MODEL} image->text retrieval on held-out web pairs "
                                            f"({hit(rep)}, {secs:.1f}s)")
    else:
        publish_table(cfg, "encoder", [{"item": "model", "value": rep["model"]},
                                       {"item": "weights", "value": rep["weights"]}], "curation encoder weights found")


def embed(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    publish_table(cfg, "embed", item_rows(rep), f"clip-retrieval embeddings ({hit(rep)}, {secs:.1f}s)")


def index(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    rows = [{"index": n, **{k: v for k, v in r.items() if k != "tuning"}} for n, r in rep.items() if isinstance(r, dict)]
    publish_table(cfg, "index", rows + [{"index": "cache", "vectors": hit(rep)}],
                  f"faiss indexes ({hit(rep)}, {secs:.1f}s)")
    lines = [f"# Index report ({cfg.name})", "", "| index | vectors | dim | factory | search params | re-rank | MiB | "
             f"build s | recall@{cfg.index.recall_k} (target) | self first |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rep.items():
        if isinstance(r, dict):
            recall = next((v for k, v in r.items() if k.startswith("recall@")), None)
            met = "" if r.get("target_met", True) else ", **not met**"
            mib = f"{r['index_bytes'] / 2**20:.1f}" if r.get("index_bytes") is not None else "-"
            lines.append(f"| {name} | {r.get('vectors')} | {r.get('dim')} | `{r.get('index_key')}` | "
                         f"`{r.get('index_param')}` | {r.get('rerank_factor') or '-'}x | {mib} | {r.get('build_seconds')} | "
                         f"{recall} ({r.get('target_recall')}{met}) | {r.get('self_first')} |")
    lines += ["", f"Recall is measured against exact search (the query itself dropped, ties counted) on the held-out half "
                  f"of {cfg.index.recall_sample} sampled queries; the other half tuned the search parameter to "
                  f"index.target_recall. Outputs in `" + str(stage_dir(cfg, "index")) + "`."]
    publish_markdown(cfg, "index-report", "\n".join(lines), "faiss index report")


def vocabulary(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    publish_table(cfg, "vocabulary", item_rows(rep), f"concept vocabulary ({hit(rep)}, {secs:.1f}s)")


def concepts(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    publish_table(cfg, "concepts", item_rows(rep, ["concepts", "dim", "templates", "seconds"]),
                  f"concept text embeddings ({hit(rep)})")


def curate(cfg: PipelineConfig, rep: dict[str, Any], secs: float, how: str = "") -> None:
    publish_table(cfg, "curate", rep["per_shard"] + [{"shard": "all", **{k: v for k, v in rep.items()
                                                                          if k != "per_shard"}}],
                  f"concept archives, variant {cfg.curation.variant}{how}")


def semantic_gap(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    from cocu_core.evaluation.training_signal import format_training_signal

    signal = rep.get("training_signal")
    seen = f"## What training sees (per arm, over {cfg.train.epochs} epochs)\n\n{format_training_signal(signal)}\n\n" \
        if signal else ""
    publish_table(cfg, "semantic-gap", [{"method": m, **r} for m, r in rep["rows"].items()],
                  "Top-3 curated concepts vs ground truth (toy world train split)")
    bias = (f"## The curation encoder's salience bias (train images: present classes among the image's top 3 by "
            f"image->class similarity, by area quartile)\n\n{rep['salience_table']}\n\n") if rep.get("salience_table") else ""
    publish_markdown(cfg, "curation-report", f"# Semantic gap ({cfg.curation.variant})\n\n{rep['table']}\n\n{bias}{seen}"
                                             f"## Examples\n\n{rep['examples']}\n")


def train(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    out = Path(rep["dir"])
    keys = ["variant", "model", "steps", "epochs", "samples", "first_loss", "last_loss", "seconds", "images_per_s",
            "device", "world_size"]
    publish_table(cfg, "train", item_rows(rep, keys) + [{"item": "skipped", "value": sum(rep.get("skipped", {}).values())}],
                  f"GroupViT training ({hit(rep)}, {secs:.1f}s)")
    publish_markdown(cfg, "train-loss-curve",
                     f"# Training loss ({rep.get('variant')})\n\n{png_markdown(out / 'loss_curve.png', 'loss curve')}\n\n"
                     f"{rep.get('steps')} steps, loss {rep.get('first_loss')} -> {rep.get('last_loss')}; "
                     f"outputs in `{out}`", "loss curve")


def evaluate(cfg: PipelineConfig, rep: dict[str, Any], secs: float) -> None:
    rows = [{"benchmark": d, "metric": "mIoU %", "value": r.get("mIoU"), "images": r.get("images")}
            for d, r in rep.get("segmentation", {}).items()]
    rows += [{"benchmark": d, "metric": "pixel accuracy %", "value": r.get("aAcc"), "images": r.get("images")}
             for d, r in rep.get("segmentation", {}).items()]
    rows += [{"benchmark": f"{d} (classification)", "metric": m, "value": r.get(m.split()[0]), "images": r.get("images")}
             for d, r in rep.get("classification", {}).items() for m in ("top1 %", "top5 %")]
    rows.append({"benchmark": "cache", "metric": hit(rep), "value": None, "images": None})
    publish_table(cfg, "evaluate", rows, f"zero-shot evaluation ({hit(rep)}, {secs:.1f}s)")
    report = Path(rep.get("dir", "")) / "report.md"
    publish_markdown(cfg, "evaluation-report", report.read_text() if report.is_file() else rep.get("table", ""),
                     "evaluation table and panels")


# stage name -> renderer of its report: the contract test checks every registered stage has one
REPORT: dict[str, Callable[..., None]] = {
    "toyworld": toyworld, "download": download, "encoder": encoder, "embed": embed, "index": index,
    "vocabulary": vocabulary, "concepts": concepts, "curate": curate, "semantic_gap": semantic_gap, "train": train,
    "evaluate": evaluate,
}
