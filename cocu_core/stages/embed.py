"""embed: CLIP embeddings of the download shards in one persistent loop (clip-retrieval's mapper and writer), resumable.

Reads   download/shards/*.tar, download/manifest.json (its cache key); the encoder stage's weights
Writes  embed/ (layout below)
Key     embed_inputs_fp(download key, encoder fingerprint) + FIELDS; RUNTIME_FIELDS recorded, not keyed

Layout of ``out_dir`` (``<workdir>/embed``)::

    parts/<shard>/    one shard's embeddings in clip-retrieval's layout (img_emb/, text_emb/, metadata/) + done.json
    img_emb.npy       (N, D) float32, L2-normalised image embeddings; row i <-> metadata row i
    text_emb.npy      (N, D) float32, L2-normalised caption embeddings; row i <-> metadata row i
    metadata.parquet  row, key (webdataset key: the stable sample id), sample_id (the list's id,
                      e.g. the toy world key), caption, url, shard; sorted by key
    manifest.json     counts, and ``shard_rows``: each shard's row range [start, end)

A shard's part is written under a temporary name and renamed when complete, so a killed run
redoes only unfinished shards. Memory is bounded by one shard: the parts are checked from their
headers first (a truncated or misaligned part fails naming its file, before anything is written),
then streamed shard by shard into the final arrays, which later stages memory-map
(:func:`open_embeddings`). img2dataset keys start with the shard number, so sorting each shard by
key gives the global key order; the assembly checks that it does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.data.shards import read_download_manifest, shard_name
from cocu_core.embeddings.store import assemble_parts
from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, model_config_paths, resolve_weights
from cocu_core.io import read_json, stage_is_current, write_manifest
from cocu_core.layout import stage_dir
from cocu_core.proc import run_module
from cocu_core.stages.base import Context, Report, Stage, StageStatus, compare

FIELDS = ["encoder.model", "encoder.pretrained"]


RUNTIME_FIELDS = ["encoder.inference_batch_size", "encoder.num_workers", "encoder.embed_processes",
                  "encoder.distribution_strategy", "encoder.inference_options"]


VERSION = 2  # bump when the same model and shards embed differently (2: models forced into eval mode)


LAYOUT = 2  # bump when the files the stage assembles change (2: streamed, shard row ranges in the manifest)


def embed_inputs_fp(download_key: str, encoder_fingerprint: str) -> str:
    """Why: the embed stage's inputs key (download + encoder + embedder version), shared with `cocu status`."""
    return fingerprint({"download": download_key, "encoder": encoder_fingerprint, "embedder": VERSION,
                        "layout": LAYOUT})


def _part_key(download_key: str, encoder_fingerprint: str, fields: dict[str, Any]) -> str:
    """Why: a part is reusable whenever the same model embedded the same shard, whatever the assembled layout."""
    inputs = fingerprint({"download": download_key, "encoder": encoder_fingerprint, "embedder": VERSION})
    return fingerprint({"inputs": inputs, "config": fields})


def part_key_for(download_dir: str | Path, encoder_fingerprint: str, cfg: PipelineConfig) -> str:
    """Why: the `done.json` key that marks a part finished for this download and encoder (simulations write it too)."""
    dl = read_download_manifest(download_dir)
    return _part_key(dl.get("generation", dl["cache_key"]), encoder_fingerprint, cfg.fields_for(FIELDS))


def embed_stage(
    download_dir: str | Path,
    out_dir: str | Path,
    cfg: PipelineConfig,
    clip_model: str,
    encoder_fingerprint: str,
    model_configs: Sequence[str | Path] = (),
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Why: embed every downloaded sample once; reruns skip finished shards or hit the cache.

    `clip_model` is clip-retrieval's model string (see `load_encoder`); `model_configs` are open_clip
    model-config JSON files to register first (our `cocu-tiny.json`).
    """
    from tqdm import tqdm

    dl = read_download_manifest(download_dir)
    out = Path(out_dir)
    fields = cfg.fields_for(FIELDS)
    inputs_fp = embed_inputs_fp(dl["cache_key"], encoder_fingerprint)
    if stage_is_current(out, inputs_fp, fields):
        m = read_json(out / "manifest.json")
        return {**m["counts"], **m.get("report", {}), "cached": True}

    # Shards of one download generation are never rewritten (rows appended to the list become new shards), so
    # parts are keyed by the generation: when the list grows, only the new shards are embedded.
    part_key = part_key_for(download_dir, encoder_fingerprint, cfg)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    n_shards = int(dl["n_shards"])
    names = [shard_name(i) for i in range(n_shards)]
    shards_dir = Path(download_dir) / "shards"
    t0 = time.time()
    pending, stats = [], {}
    for name in names:
        marker = parts / name / "done.json"
        if not (marker.is_file() and read_json(marker).get("part_key") == part_key):
            pending.append(name)
    done, redone = n_shards - len(pending), len(pending)
    if pending:
        if log:
            log(f"embed: {len(pending)} of {n_shards} shards ({clip_model}, {cfg.encoder.num_workers} decode workers, "
                f"{cfg.encoder.embed_processes or 'one per GPU'} processes)")
        bar = tqdm(total=n_shards, initial=done, desc="embed: shards", unit="shard", disable=not progress, leave=False)

        def poll() -> None:
            bar.n = sum((parts / s / "done.json").is_file() for s in names)
            bar.refresh()

        stats_f = out / "embed_stats.json"
        stats_f.unlink(missing_ok=True)
        spec = {"stats_path": str(stats_f.resolve()), "parts_dir": str(parts.resolve()), "shards_dir": str(shards_dir.resolve()), "shards": pending,
                "clip_model": clip_model, "part_key": part_key, "batch_size": cfg.encoder.inference_batch_size,
                "num_workers": cfg.encoder.num_workers, "processes": cfg.encoder.embed_processes, "model_configs": [str(p) for p in model_configs],
                "distribution_strategy": cfg.encoder.distribution_strategy,
                "inference_options": dict(cfg.encoder.inference_options)}
        try:
            run_module("cocu_core.embeddings._runner", spec, out / "embed_spec.json", out / "clip_inference.log", poll)
        finally:
            bar.close()
        stats = read_json(stats_f) if stats_f.is_file() else {}
    infer_s = time.time() - t0
    (out / "manifest.json").unlink(missing_ok=True)  # the arrays are about to change: not current until rewritten
    asm = assemble_parts(parts, names, out, clip_model)
    n, dim = asm["rows"], asm["dim"]
    expected = int(dl["counts"]["success"])
    report = {"embedded": n, "downloaded": expected, "skipped_unreadable": expected - n, "dim": dim,
              "shards": n_shards, "shards_reused": done, "shards_embedded": redone, "seconds": round(infer_s, 2),
              "samples_per_s": round(n / infer_s, 1) if redone and infer_s > 0 else None,
              "assemble_seconds": round(time.time() - t0 - infer_s, 2),
              "embed_processes": stats.get("processes", 1 if stats else None),
              "decode_workers_used": stats.get("decode_workers_used")}
    if log:
        log(f"embed: {n} samples x {dim} dims from {n_shards} shards ({done} reused) in {infer_s:.1f}s")
    write_manifest(out, "embed", inputs_fp, fields, counts={"embedded": n, "dim": dim, "shards": n_shards},
                   extra={"report": report, "clip_model": clip_model, "runtime": cfg.fields_for(RUNTIME_FIELDS),
                          "shard_rows": asm["shard_rows"], "part_key": part_key})
    return {**report, "cached": False}


def run(ctx: Context) -> Report:
    """Why: the configured encoder's clip-retrieval model string and fingerprint, then the stage."""
    cfg = ctx.cfg
    arch, ckpt = resolve_weights(cfg)
    return embed_stage(ctx.dir("download"), ctx.dir("embed"), cfg, clip_model_string(arch, ckpt),
                       encoder_fingerprint(cfg), model_config_paths(cfg), log=ctx.log, progress=ctx.progress)


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the expected key from the download's and the encoder's expected keys."""
    needs = {k: up[k] for k in ("download", "encoder")}
    inputs = embed_inputs_fp(needs["download"].key, needs["encoder"].key) if all(s.key for s in needs.values()) else None
    return compare("embed", stage_dir(cfg, "embed"), inputs, cfg.fields_for(FIELDS), needs)


def probe(cfg: PipelineConfig) -> Callable[[], tuple[float, str]]:
    """Why: parts finished so far (each has a done.json) out of the download's shards."""
    out = stage_dir(cfg, "embed")
    total = max(1, int(read_download_manifest(stage_dir(cfg, "download")).get("n_shards", 1)))

    def read() -> tuple[float, str]:
        done = sum(1 for _ in (out / "parts").glob("*/done.json")) if (out / "parts").is_dir() else 0
        return done / total, f"embed: {done}/{total} shards"

    return read


STAGE = Stage("embed", needs=("download", "encoder"), run=run, status=status, fields=tuple(FIELDS), probe=probe)
