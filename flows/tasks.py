"""Prefect tasks: each one thin call into one `cocu_core` stage, plus the artifacts it shows in the UI.

Every task runs its compute under the thread policy (`cocu_core.runtime.limit_threads`) with the
thread count the flow gives it, so tasks that run side by side never oversubscribe the cores.
Stages skip work themselves when their manifest matches (their cache is on disk), so tasks use
no Prefect result cache (`NO_CACHE`) and persist nothing.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE

from cocu_core.config import PipelineConfig
from cocu_core.runtime import limit_threads

STAGE_TASK: dict[str, Any] = {"retries": 0, "cache_policy": NO_CACHE, "persist_result": False}


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


def _log(msg: str) -> None:
    get_run_logger().info(msg)


class Progress:
    """Why: long stages (download, embed, train) show a progress artifact and log their progress; a thread
    polls what the stage leaves on disk, so the stage code knows nothing about Prefect."""

    def __init__(self, cfg: PipelineConfig, stage: str, probe: Callable[[], tuple[float, str]], every: float = 2.0):
        self.cfg, self.stage, self.probe, self.every = cfg, stage, probe, every
        self.logger = get_run_logger()
        self._stop = threading.Event()
        self._id = None
        self._last = ""

    def _tick(self) -> None:
        try:
            frac, msg = self.probe()
        except (OSError, ValueError, KeyError):  # files being written right now: next tick
            return
        if frac is not None:
            self.set(frac)
        if msg and msg != self._last:
            self.logger.info(msg)
            self._last = msg

    def set(self, frac: float) -> None:
        """Why: a stage that reports its own progress (a log line with `step i/n`) moves the bar directly."""
        if self._id is not None:
            update_progress_artifact(self._id, round(100 * min(max(frac, 0.0), 1.0), 1))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._tick()

    def __enter__(self) -> "Progress":
        self._id = create_progress_artifact(0.0, key=artifact_key(self.cfg, f"{self.stage}-progress"),
                                            description=f"{self.stage} progress")
        self._thread = threading.Thread(target=self._loop, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if exc[0] is None:
            self._tick()
            update_progress_artifact(self._id, 100.0)


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


@task(name="toyworld", **STAGE_TASK)
def toyworld_task(cfg: PipelineConfig, threads: int) -> dict:
    """Generate (or reuse) the toy world under the run's workdir."""
    import pyarrow.parquet as pq

    from cocu_core.toyworld import generate_world

    out = cfg.workpath / "toyworld"
    t0 = time.time()
    with limit_threads(threads):
        manifest = generate_world(out, cfg.data.toyworld, workers=threads)
    gap = pq.read_table(out / "gap.parquet").to_pylist()
    publish_table(cfg, "toyworld-gap", gap,
                  f"Semantic gap of the toy world's train+val captions ({hit(manifest)}, {time.time() - t0:.1f}s)")
    return {"dir": str(out), "seconds": round(time.time() - t0, 2), **manifest}


@task(name="download", **STAGE_TASK)
def download_task(cfg: PipelineConfig, threads: int) -> dict:
    """Serve the toy `train` split on loopback (only while downloading) or use the configured list; run img2dataset."""
    from cocu_core.data.download import download_stage, report_rows

    out = cfg.workpath / "download"
    t0 = time.time()

    def probe() -> tuple[float, str]:
        import pyarrow.parquet as pq

        rows = pq.read_metadata(out / "input.parquet").num_rows if (out / "input.parquet").is_file() else 0
        total = max(1, math.ceil(rows / cfg.data.shard_size))
        done = _count(out / "shards", "*_stats.json")
        return done / total, f"download: {done}/{total} shards"

    with limit_threads(threads), Progress(cfg, "download", probe):
        if cfg.data.source == "toyworld":
            from cocu_core.toyworld import read_pairs, serve_directory, write_url_list

            split = cfg.workpath / "toyworld" / "train"
            with serve_directory(split) as srv:
                url_list = cfg.workpath / "urls" / "train.parquet"
                write_url_list(read_pairs(split), srv.base_url, url_list)
                rep = download_stage(url_list, out, cfg, base_url=srv.base_url, log=_log, progress=False)
        else:
            rep = download_stage(cfg.data.url_list, out, cfg, log=_log, progress=False)
    publish_table(cfg, "download", report_rows(rep),
                  f"img2dataset download: {rep['success']}/{rep['input']} pairs ({hit(rep)}, {time.time() - t0:.1f}s)")
    return rep


@task(name="encoder", **STAGE_TASK)
def encoder_task(cfg: PipelineConfig, threads: int) -> dict:
    """Train (or reuse) the toy curation encoder, or check that the configured open_clip weights are present."""
    from cocu_core.encoder.load import encoder_fingerprint, resolve_weights
    from cocu_core.encoder.toy_model import TOY_MODEL

    t0 = time.time()
    enc = cfg.encoder
    if enc.model == TOY_MODEL and not enc.pretrained and enc.train_toy:
        from cocu_core.encoder.train import train_toy_encoder

        with limit_threads(threads):
            m = train_toy_encoder(cfg, cfg.workpath / "toyworld" / "web", cfg.workpath / "encoder", log=_log,
                                  progress=False)
        cached = bool(m.get("cached"))
        rep = m["report"]
        rows = item_rows({**{k: rep[k] for k in ("r@1", "r@5", "chance_r@1", "chance_r@5", "median_rank", "n_pairs",
                                                 "first_loss", "final_loss", "train_seconds", "steps") if k in rep},
                          "cached": cached})
        publish_table(cfg, "encoder", rows, f"{TOY_MODEL} image->text retrieval on held-out web pairs "
                                            f"({hit(m)}, {time.time() - t0:.1f}s)")
    else:
        arch, ckpt = resolve_weights(cfg)
        cached = True  # given weights: nothing to compute
        publish_table(cfg, "encoder", [{"item": "model", "value": arch}, {"item": "weights", "value": str(ckpt)}],
                      "curation encoder weights found")
    return {"fingerprint": encoder_fingerprint(cfg), "cached": cached, "seconds": round(time.time() - t0, 2)}


@task(name="embed", **STAGE_TASK)
def embed_task(cfg: PipelineConfig, threads: int) -> dict:
    """clip-retrieval inference over the shards: aligned image/caption embeddings and metadata."""
    from cocu_core.data.download import read_download_manifest
    from cocu_core.embed import embed_stage
    from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, model_config_paths, resolve_weights

    t0 = time.time()
    arch, ckpt = resolve_weights(cfg)
    out = cfg.workpath / "embed"
    total = max(1, int(read_download_manifest(cfg.workpath / "download").get("n_shards", 1)))

    def probe() -> tuple[float, str]:
        done = _count(out / "parts", "*/done.json")
        return done / total, f"embed: {done}/{total} shards"

    with limit_threads(threads), Progress(cfg, "embed", probe):
        rep = embed_stage(cfg.workpath / "download", out, cfg, clip_model_string(arch, ckpt), encoder_fingerprint(cfg),
                          model_config_paths(cfg), log=_log, progress=False)
    publish_table(cfg, "embed", item_rows(rep), f"clip-retrieval embeddings ({hit(rep)}, {time.time() - t0:.1f}s)")
    return rep


@task(name="index", **STAGE_TASK)
def index_task(cfg: PipelineConfig, threads: int) -> dict:
    """autofaiss image and caption indexes, with recall@k against exact search."""
    from cocu_core.index import build_index_stage

    t0 = time.time()
    with limit_threads(threads):
        rep = build_index_stage(cfg.workpath / "embed", cfg.workpath / "index", cfg, log=_log)
    rows = [{"index": n, **r} for n, r in rep.items() if isinstance(r, dict)]
    publish_table(cfg, "index", rows + [{"index": "cache", "vectors": hit(rep)}],
                  f"autofaiss indexes ({hit(rep)}, {time.time() - t0:.1f}s)")
    lines = [f"# Index report ({cfg.name})", "", "| index | vectors | dim | factory | search params | build s | "
             f"recall@{cfg.index.recall_k} | self first |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rep.items():
        if isinstance(r, dict):
            recall = next((v for k, v in r.items() if k.startswith("recall@")), None)
            lines.append(f"| {name} | {r.get('vectors')} | {r.get('dim')} | `{r.get('index_key')}` | "
                         f"`{r.get('index_param')}` | {r.get('build_seconds')} | {recall} | {r.get('self_first')} |")
    lines += ["", f"Recall is measured against exact search on {cfg.index.recall_sample} sampled queries "
                  "(tie-aware); outputs in `" + str(cfg.workpath / "index") + "`."]
    publish_markdown(cfg, "index-report", "\n".join(lines), "autofaiss index report")
    return rep


@task(name="vocabulary", **STAGE_TASK)
def vocabulary_task(cfg: PipelineConfig, threads: int) -> dict:
    """Concept vocabulary from the corpus's captions, unioned with the benchmark classes."""
    from cocu_core.curation_stage import vocabulary_stage

    t0 = time.time()
    with limit_threads(threads):
        rep = vocabulary_stage(cfg.workpath / "embed", cfg.workpath / "vocabulary", cfg)
    publish_table(cfg, "vocabulary", item_rows(rep), f"concept vocabulary ({hit(rep)}, {time.time() - t0:.1f}s)")
    return rep


@task(name="concept-embeddings", **STAGE_TASK)
def concepts_task(cfg: PipelineConfig, threads: int, compute: bool = True) -> dict:
    """Text embeddings of every vocabulary concept (prompt templates averaged), cached per vocabulary and encoder.

    With `compute=False` (the stage was not selected) only cached embeddings are loaded."""
    from cocu_core.concepts.embed import embeddings_cache_key
    from cocu_core.concepts.vocabulary import read_vocabulary
    from cocu_core.curation_stage import concept_embeddings_stage
    from cocu_core.encoder.load import encoder_fingerprint, load_encoder

    t0 = time.time()
    enc_id = encoder_fingerprint(cfg)
    vocab = cfg.workpath / "vocabulary"

    def encode(texts: list[str]):
        if not compute:
            key = embeddings_cache_key(read_vocabulary(vocab / "vocabulary.parquet").column("concept").to_pylist(),
                                       enc_id, cfg.encoder.templates)
            raise FileNotFoundError(f"no concept embeddings {cfg.workpath / 'concept_emb'}/concept_emb_{key}.npy for "
                                    "this vocabulary and encoder; run the concepts stage (--from concepts)")
        return load_encoder(cfg).encode_text(texts)

    with limit_threads(threads):
        emb, cached = concept_embeddings_stage(vocab, cfg.workpath / "concept_emb", cfg, enc_id, encode)
    rep = {"concepts": int(emb.shape[0]), "dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
           "templates": len(cfg.encoder.templates), "seconds": round(time.time() - t0, 2), "cached": cached}
    if compute:
        publish_table(cfg, "concepts", item_rows(rep), f"concept text embeddings ({hit(rep)})")
    return {**rep, "encoder": enc_id, "emb": emb}


@task(name="curation-inputs", **STAGE_TASK)
def curation_inputs_task(cfg: PipelineConfig, concepts: dict, threads: int):
    """Embeddings, metadata and each caption's extracted concepts, loaded once for every curation shard."""
    from cocu_core.curation_stage import load_curation_data

    with limit_threads(threads):
        return load_curation_data(cfg.workpath / "embed", cfg.workpath / "vocabulary", concepts["emb"],
                                  cfg.curation.max_ngram)


@task(name="load-indexes", **STAGE_TASK)
def load_indexes_task(cfg: PipelineConfig) -> dict:
    """The image and caption FAISS indexes with autofaiss's tuned search parameters."""
    from cocu_core.index import load_index

    return {name: load_index(cfg.workpath / "index", name) for name in ("image", "caption")}


@task(name="curate-shard", **STAGE_TASK)
def curate_shard_task(cfg: PipelineConfig, shard: str, data, indexes: dict, encoder_id: str, threads: int) -> dict:
    """Curate one download shard into its Parquet concept archive (cached per shard)."""
    from cocu_core.curation_stage import archive_dir_for, curate_shard_stage, curation_upstream_fp

    with limit_threads(threads):
        return curate_shard_stage(data, shard, archive_dir_for(cfg), cfg, curation_upstream_fp(cfg, encoder_id),
                                  encoder_id, indexes["image"], indexes["caption"])


@task(name="semantic-gap-report", **STAGE_TASK)
def gap_report_task(cfg: PipelineConfig, data, indexes: dict, encoder_id: str, threads: int) -> dict:
    """Precision/recall of top-3 curated concepts vs the toy world's ground truth, per method."""
    from cocu_core.curation_stage import archive_dir_for, examples_markdown, gap_report_stage
    from cocu_core.evaluation.semantic_gap import format_gap_report
    from cocu_core.evaluation.training_signal import format_training_signal, training_signal_stage

    with limit_threads(threads):
        rows, cached = gap_report_stage(data, cfg, encoder_id, indexes["image"], indexes["caption"])
    table = format_gap_report(rows)
    with limit_threads(threads):  # cached: the stage above computed it
        signal, _ = training_signal_stage(cfg)
    seen = f"## What training sees (per arm, over {cfg.train.epochs} epochs)\n\n{format_training_signal(signal)}\n\n" \
        if signal else ""
    examples = examples_markdown(archive_dir_for(cfg), cfg.workpath / "toyworld" / "train", data)
    publish_table(cfg, "semantic-gap", [{"method": m, **r} for m, r in rows.items()],
                  "Top-3 curated concepts vs ground truth (toy world train split)")
    publish_markdown(cfg, "curation-report", f"# Semantic gap ({cfg.curation.variant})\n\n{table}\n\n{seen}"
                                             f"## Examples\n\n{examples}\n")
    return {"rows": rows, "table": table, "training_signal": signal, "cached": cached}


@task(name="publish-archives", **STAGE_TASK)
def publish_archives_task(cfg: PipelineConfig, download: dict) -> dict:
    """Freeze the curated archives as a numbered version (if they changed) and keep `runtime.keep_versions`."""
    from cocu_core.curation_stage import archive_dir_for
    from cocu_core.io import read_manifest
    from cocu_core.versions import publish_version, version_dir, versions_root

    root = versions_root(cfg.workpath, cfg.curation.variant)
    dl = read_manifest(cfg.workpath / "download") or {}
    rec = publish_version(archive_dir_for(cfg), root, cfg.runtime.keep_versions,
                          {"pairs": (dl.get("counts") or {}).get("success"), "download_key": dl.get("cache_key"),
                           "variant": cfg.curation.variant})
    rec["dir"] = str(version_dir(root, rec["version"]))
    if rec["new_version"]:
        _log(f"archives: version {rec['version']} in {rec['dir']} ({rec['changes']}); pruned {rec['pruned']}")
    return {**rec, "cached": not rec["new_version"]}


def _train_probe(cfg: PipelineConfig, out: Path) -> Callable[[], tuple[float, str]]:
    """Why: training progress and loss from the curve the trainer writes at every checkpoint."""
    import csv
    import io

    def probe() -> tuple[float, str]:
        f = out / "loss_curve.csv"
        if not f.is_file():
            return 0.0, ""
        rows = list(csv.DictReader(io.StringIO(f.read_text())))
        if not rows:
            return 0.0, ""
        last = rows[-1]
        step, epoch = int(last["step"]), int(last["epoch"])
        frac = step / cfg.train.max_steps if cfg.train.max_steps else (epoch + 0.5) / cfg.train.epochs
        return frac, f"train: step {step}, epoch {epoch + 1}/{cfg.train.epochs}, loss {float(last['loss']):.4f}"

    return probe


@task(name="train", **STAGE_TASK)
def train_task(cfg: PipelineConfig, threads: int) -> dict:
    """GroupViT pre-training on the shards and the variant's concept archives (resumes from its last checkpoint)."""
    from cocu_core.train.stage import train_dir_for, train_stage

    t0 = time.time()
    out = train_dir_for(cfg)
    import re

    with limit_threads(threads), Progress(cfg, "train", _train_probe(cfg, out)) as bar:
        def log(msg: str) -> None:  # the trainer's lines reach the flow-run log; `step i/n` moves the bar
            _log(msg)
            m = re.search(r"step (\d+)\s*/\s*(\d+)", msg)
            if m and int(m.group(2)):
                bar.set(int(m.group(1)) / int(m.group(2)))

        rep = train_stage(cfg, log=log, progress=False)
    keys = ["variant", "model", "steps", "epochs", "samples", "first_loss", "last_loss", "seconds", "images_per_s",
            "device", "world_size"]
    publish_table(cfg, "train", item_rows(rep, keys) + [{"item": "skipped", "value": sum(rep.get("skipped", {}).values())}],
                  f"GroupViT training ({hit(rep)}, {time.time() - t0:.1f}s)")
    publish_markdown(cfg, "train-loss-curve",
                     f"# Training loss ({rep.get('variant')})\n\n{png_markdown(out / 'loss_curve.png', 'loss curve')}\n\n"
                     f"{rep.get('steps')} steps, loss {rep.get('first_loss')} -> {rep.get('last_loss')}; "
                     f"outputs in `{out}`", "loss curve")
    return rep


@task(name="evaluate", **STAGE_TASK)
def evaluate_task(cfg: PipelineConfig, threads: int) -> dict:
    """Zero-shot segmentation mIoU and classification of the trained model, with panels."""
    from cocu_core.evaluation.stage import evaluate_stage

    t0 = time.time()
    with limit_threads(threads):
        rep = evaluate_stage(cfg, log=_log, progress=False)
    rows = [{"benchmark": d, "metric": "mIoU %", "value": r.get("mIoU"), "images": r.get("images")}
            for d, r in rep.get("segmentation", {}).items()]
    rows += [{"benchmark": d, "metric": "pixel accuracy %", "value": r.get("aAcc"), "images": r.get("images")}
             for d, r in rep.get("segmentation", {}).items()]
    rows += [{"benchmark": f"{d} (classification)", "metric": m, "value": r.get(m.split()[0]), "images": r.get("images")}
             for d, r in rep.get("classification", {}).items() for m in ("top1 %", "top5 %")]
    rows.append({"benchmark": "cache", "metric": hit(rep), "value": None, "images": None})
    publish_table(cfg, "evaluate", rows, f"zero-shot evaluation ({hit(rep)}, {time.time() - t0:.1f}s)")
    report = Path(rep.get("dir", "")) / "report.md"
    publish_markdown(cfg, "evaluation-report", report.read_text() if report.is_file() else rep.get("table", ""),
                     "evaluation table and panels")
    return rep
