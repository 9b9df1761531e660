"""The `cocu_pipeline` flow: toy world -> download -> encoder -> embed -> index (later issues append more).

Each task is a thin call into `cocu_core`; stages skip work themselves when their manifest matches
(the cache key is the stage's inputs fingerprint plus the config fields it reads), so a rerun with
unchanged inputs is all cache hits, also across Prefect result-storage resets.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

for _k, _v in {"NO_ALBUMENTATIONS_UPDATE": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(_k, _v)

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from cocu_core.config import PipelineConfig, _deep_merge, load_config, parse_override  # noqa: E402


def resolve_config(config_path: str, overrides: list[str] | None) -> PipelineConfig:
    """Why: flows receive plain strings (deployable parameters) and rebuild the typed config."""
    extra: dict = {}
    for item in overrides or []:
        extra = _deep_merge(extra, parse_override(item))
    return load_config(config_path, extra)


def _artifact_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")


@task(name="toyworld", retries=0)
def toyworld_task(cfg: PipelineConfig) -> dict:
    """Generate (or reuse) the toy world under the run's workdir."""
    from cocu_core.toyworld import generate_world
    import pyarrow.parquet as pq

    out = cfg.workpath / "toyworld"
    t0 = time.time()
    manifest = generate_world(out, cfg.data.toyworld)
    gap = pq.read_table(out / "gap.parquet").to_pylist()
    create_table_artifact(
        key=_artifact_key(f"{cfg.name}-toyworld-gap"),
        table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in gap],
        description=f"Semantic gap of the toy world's train+val captions ({'cache hit' if manifest.get('cached') else 'generated'} in {time.time() - t0:.1f}s)",
    )
    return {"dir": str(out), **manifest}


def _fmt(v):
    return round(v, 4) if isinstance(v, float) else (v if isinstance(v, (int, str, type(None))) else str(v))


def _publish(cfg: PipelineConfig, stage: str, rows: list[dict], description: str) -> None:
    create_table_artifact(key=_artifact_key(f"{cfg.name}-{stage}"), table=[{k: _fmt(v) for k, v in r.items()} for r in rows],
                          description=description)


def _log(msg: str) -> None:
    from prefect import get_run_logger

    get_run_logger().info(msg)


@task(name="download", retries=0)
def download_task(cfg: PipelineConfig) -> dict:
    """Serve the toy `train` split on loopback (only while downloading) or use the configured list; run img2dataset."""
    from cocu_core.data.download import download_stage, report_rows

    out = cfg.workpath / "download"
    t0 = time.time()
    if cfg.data.source == "toyworld":
        from cocu_core.toyworld import read_pairs, serve_directory, write_url_list

        split = cfg.workpath / "toyworld" / "train"
        with serve_directory(split) as srv:
            url_list = cfg.workpath / "urls" / "train.parquet"
            write_url_list(read_pairs(split), srv.base_url, url_list)
            rep = download_stage(url_list, out, cfg, base_url=srv.base_url, log=_log)
    else:
        if not cfg.data.url_list:
            raise ValueError("data.source is url_list but data.url_list is not set")
        rep = download_stage(cfg.data.url_list, out, cfg, log=_log)
    _publish(cfg, "download", report_rows(rep),
             f"img2dataset download: {rep['success']}/{rep['input']} pairs ({'cache hit' if rep['cached'] else 'downloaded'}, "
             f"{time.time() - t0:.1f}s)")
    return rep


@task(name="encoder", retries=0)
def encoder_task(cfg: PipelineConfig) -> dict:
    """Train (or reuse) the toy curation encoder, or check that the configured open_clip weights are present."""
    from cocu_core.encoder.load import encoder_fingerprint, resolve_weights
    from cocu_core.encoder.toy_model import TOY_MODEL

    t0 = time.time()
    enc = cfg.encoder
    if enc.model == TOY_MODEL and not enc.pretrained and enc.train_toy:
        from cocu_core.encoder.train import train_toy_encoder

        m = train_toy_encoder(cfg, cfg.workpath / "toyworld" / "web", cfg.workpath / "encoder", log=_log)
        cached = bool(m.get("cached"))
        rep = m["report"]
        rows = [{"item": k, "value": rep[k]} for k in ("r@1", "r@5", "chance_r@1", "chance_r@5", "median_rank",
                                                      "n_pairs", "first_loss", "final_loss", "train_seconds", "steps")]
        rows.append({"item": "cache", "value": "hit" if m.get("cached") else "computed"})
        _publish(cfg, "encoder", rows, f"{TOY_MODEL} image->text retrieval on held-out web pairs ({time.time() - t0:.1f}s)")
    else:
        arch, ckpt = resolve_weights(cfg)
        cached = True  # given weights: nothing to compute
        _publish(cfg, "encoder", [{"item": "model", "value": arch}, {"item": "weights", "value": str(ckpt)}],
                 "curation encoder weights found")
    return {"fingerprint": encoder_fingerprint(cfg), "cached": cached}


@task(name="embed", retries=0)
def embed_task(cfg: PipelineConfig, encoder: dict) -> dict:
    """clip-retrieval inference over the shards: aligned image/caption embeddings and metadata."""
    from cocu_core.embed import embed_stage
    from cocu_core.encoder.load import clip_model_string, model_config_paths, resolve_weights

    t0 = time.time()
    arch, ckpt = resolve_weights(cfg)
    rep = embed_stage(cfg.workpath / "download", cfg.workpath / "embed", cfg, clip_model_string(arch, ckpt),
                      encoder["fingerprint"], model_config_paths(cfg), log=_log)
    _publish(cfg, "embed", [{"item": k, "value": v} for k, v in rep.items()],
             f"clip-retrieval embeddings ({'cache hit' if rep['cached'] else 'computed'}, {time.time() - t0:.1f}s)")
    return rep


@task(name="index", retries=0)
def index_task(cfg: PipelineConfig, embed: dict) -> dict:
    """autofaiss image and caption indexes, with recall@k against exact search."""
    from cocu_core.index import build_index_stage

    t0 = time.time()
    rep = build_index_stage(cfg.workpath / "embed", cfg.workpath / "index", cfg, log=_log)
    rows = [{"index": n, **r} for n, r in rep.items() if isinstance(r, dict)]
    _publish(cfg, "index", rows, f"autofaiss indexes ({'cache hit' if rep['cached'] else 'built'}, {time.time() - t0:.1f}s)")
    return rep


@task(name="vocabulary", retries=0)
def vocabulary_task(cfg: PipelineConfig, embed: dict) -> dict:
    """Concept vocabulary from the corpus's captions, unioned with the benchmark classes."""
    from cocu_core.curation_stage import vocabulary_stage

    t0 = time.time()
    rep = vocabulary_stage(cfg.workpath / "embed", cfg.workpath / "vocabulary", cfg)
    _publish(cfg, "vocabulary", [{"item": k, "value": v} for k, v in rep.items()],
             f"concept vocabulary ({'cache hit' if rep['cached'] else 'built'}, {time.time() - t0:.1f}s)")
    return rep


def _curation_context(cfg: PipelineConfig):
    """Load encoder-derived concept embeddings, curation inputs and indexes (shared by the curation tasks)."""
    from cocu_core.curation_stage import concept_embeddings_stage, load_curation_data
    from cocu_core.encoder.load import encoder_fingerprint, load_encoder
    from cocu_core.index import load_index

    enc_id = encoder_fingerprint(cfg)
    emb, hit = concept_embeddings_stage(cfg.workpath / "vocabulary", cfg.workpath / "concept_emb", cfg, enc_id,
                                        lambda texts: load_encoder(cfg).encode_text(texts))
    data = load_curation_data(cfg.workpath / "embed", cfg.workpath / "vocabulary", emb, cfg.curation.max_ngram)
    return enc_id, data, load_index(cfg.workpath / "index", "image"), load_index(cfg.workpath / "index", "caption"), hit


@task(name="curate-shard", retries=0, cache_policy=NO_CACHE)  # the stage manifest is the cache
def curate_shard_task(cfg: PipelineConfig, shard: str, context: tuple) -> dict:
    """Curate one download shard into its Parquet concept archive (cached per shard)."""
    from cocu_core.curation_stage import archive_dir_for, curate_shard_stage, curation_upstream_fp

    enc_id, data, image_index, caption_index, _ = context
    return curate_shard_stage(data, shard, archive_dir_for(cfg), cfg, curation_upstream_fp(cfg, enc_id),
                              enc_id, image_index, caption_index)


@task(name="semantic-gap-report", retries=0, cache_policy=NO_CACHE)  # the stage manifest is the cache
def gap_report_task(cfg: PipelineConfig, context: tuple) -> dict:
    """Precision/recall of top-3 curated concepts vs the toy world's ground truth, per method."""
    from cocu_core.curation_stage import archive_dir_for, examples_markdown, gap_report_stage
    from cocu_core.evaluation.semantic_gap import format_gap_report

    enc_id, data, image_index, caption_index, _ = context
    rows, cached = gap_report_stage(data, cfg, enc_id, image_index, caption_index)
    table = format_gap_report(rows)
    examples = examples_markdown(archive_dir_for(cfg), cfg.workpath / "toyworld" / "train", data)
    create_table_artifact(key=_artifact_key(f"{cfg.name}-semantic-gap"),
                          table=[{"method": m, **{k: _fmt(v) for k, v in r.items()}} for m, r in rows.items()],
                          description="Top-3 curated concepts vs ground truth (toy world train split)")
    create_markdown_artifact(key=_artifact_key(f"{cfg.name}-curation-report"),
                             markdown=f"# Semantic gap ({cfg.curation.variant})\n\n{table}\n\n## Examples\n\n{examples}\n")
    return {"rows": rows, "table": table, "cached": cached}


@flow(name="cocu_pipeline", log_prints=True)
def cocu_pipeline(config_path: str = "configs/toy.yaml", overrides: list[str] | None = None) -> dict:
    """Run every stage of the pipeline for one config; returns a summary dict."""
    cfg = resolve_config(config_path, overrides)
    cfg.workpath.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    timings: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.time()
        results[name] = fn(*args)
        timings[name] = round(time.time() - t0, 1)
        return results[name]

    if cfg.data.source == "toyworld":
        timed("toyworld", toyworld_task, cfg)
    timed("download", download_task, cfg)
    enc = timed("encoder", encoder_task, cfg)
    emb = timed("embed", embed_task, cfg, enc)
    timed("index", index_task, cfg, emb)
    timed("vocabulary", vocabulary_task, cfg, emb)
    t0 = time.time()
    context = _curation_context(cfg)
    from cocu_core.curation_stage import shard_names, summarise_shards

    shard_results = [curate_shard_task(cfg, s, context) for s in shard_names(context[1])]
    results["curate"] = {**summarise_shards(shard_results),
                         "cached": all(r.get("cached") for r in shard_results) and context[4]}
    timings["curate"] = round(time.time() - t0, 1)
    _publish(cfg, "curate", shard_results, f"concept archives, variant {cfg.curation.variant}")
    if cfg.data.source == "toyworld":
        gap = timed("semantic_gap", gap_report_task, cfg, context)
        print(gap["table"])
    stages = ", ".join(f"{k} {v}s{' (cached)' if isinstance(results[k], dict) and results[k].get('cached') else ''}"
                       for k, v in timings.items())
    summary = f"cocu_pipeline '{cfg.name}' finished; outputs in {cfg.workpath}; stages: {stages}"
    create_markdown_artifact(key=_artifact_key(f"{cfg.name}-summary"), markdown=f"# {summary}\n")
    results["summary"] = summary
    return results
