"""Embedding stage: clip-retrieval inference over the download shards, one shard at a time, resumable.

Layout of ``out_dir`` (``<workdir>/embed``)::

    parts/<shard>/    clip-retrieval output for one shard (img_emb/, text_emb/, metadata/) + done.json
    img_emb.npy       (N, D) float32, L2-normalised image embeddings; row i <-> metadata row i
    text_emb.npy      (N, D) float32, L2-normalised caption embeddings; row i <-> metadata row i
    metadata.parquet  row, key (webdataset key: the stable sample id), sample_id (the list's id,
                      e.g. the toy world key), caption, url, shard; sorted by key
    manifest.json

A shard's part is written under a temporary name and renamed when complete, so a killed run
redoes only unfinished shards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.data.download import read_download_manifest, shard_name
from cocu_core.proc import run_module
from cocu_core.io import atomic_path, read_json, stage_is_current, write_manifest, write_parquet_atomic

EMBED_FIELDS = ["encoder.model", "encoder.pretrained"]
RUNTIME_FIELDS = ["encoder.inference_batch_size", "encoder.num_workers"]
EMBED_VERSION = 2  # bump when the same model and shards embed differently (2: models forced into eval mode)
METADATA_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("sample_id", pa.string()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("shard", pa.string()),
    ]
)


def save_npy_atomic(path: str | Path, arr: np.ndarray) -> None:
    """Why: embeddings are read by later stages; never leave a truncated .npy under the final name."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Why: clip-retrieval stores float16; renormalise in float32 so inner product is exactly cosine."""
    x = x.astype(np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1
    return x / n


def embed_shard(tar: Path, out: Path, clip_model: str, batch_size: int, num_workers: int) -> None:
    """Why: run the real clip-retrieval inference on one webdataset shard into `out`."""
    from cocu_core.compat import ensure_torchvision

    ensure_torchvision()
    from clip_retrieval.clip_inference.main import main as clip_inference

    clip_inference(
        input_dataset=str(tar),  # a plain string: clip-retrieval brace-expands it (a list would break)
        output_folder=str(out),
        input_format="webdataset",
        enable_text=True,
        enable_image=True,
        enable_metadata=True,
        batch_size=batch_size,
        num_prepro_workers=num_workers,
        clip_model=clip_model,
        use_jit=False,
        output_partition_count=1,
        enable_wandb=False,
    )


def read_part(part: Path, shard: str, dim_hint: int = 0) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Why: one shard's embeddings and metadata, checked to be aligned row by row."""
    img_f, txt_f, meta_f = part / "img_emb/img_emb_0.npy", part / "text_emb/text_emb_0.npy", part / "metadata/metadata_0.parquet"
    if not meta_f.is_file():  # a shard with no decodable sample: clip-retrieval writes nothing
        empty = np.zeros((0, dim_hint), np.float32)
        return empty, empty, METADATA_SCHEMA.empty_table().drop(["row"])
    img, txt = np.load(img_f), np.load(txt_f)
    meta = pq.read_table(meta_f)
    if not (len(img) == len(txt) == meta.num_rows):
        raise RuntimeError(f"clip-retrieval output for shard {shard} is misaligned: {len(img)}/{len(txt)}/{meta.num_rows} rows")
    keys = meta.column("image_path").to_pylist()
    if "key" in meta.column_names and keys != meta.column("key").to_pylist():
        raise RuntimeError(f"clip-retrieval metadata for shard {shard}: image_path and key columns disagree")
    cols = meta.column_names
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "sample_id": meta.column("sample_id").cast(pa.string()) if "sample_id" in cols else pa.nulls(len(keys), pa.string()),
        "caption": meta.column("caption").cast(pa.string()),
        "url": meta.column("url").cast(pa.string()) if "url" in cols else pa.nulls(len(keys), pa.string()),
        "shard": pa.array([shard] * len(keys), pa.string()),
    })
    return img, txt, table


def embed_inputs_fp(download_key: str, encoder_fingerprint: str) -> str:
    """Why: the embed stage's inputs key (download + encoder + embedder version), shared with `cocu status`."""
    return fingerprint({"download": download_key, "encoder": encoder_fingerprint, "embedder": EMBED_VERSION})


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
    fields = cfg.fields_for(EMBED_FIELDS)
    inputs_fp = embed_inputs_fp(dl["cache_key"], encoder_fingerprint)
    if stage_is_current(out, inputs_fp, fields):
        m = read_json(out / "manifest.json")
        return {**m["counts"], **m.get("report", {}), "cached": True}

    part_key = fingerprint({"inputs": inputs_fp, "config": fields})
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    n_shards = int(dl["n_shards"])
    shards_dir = Path(download_dir) / "shards"
    t0 = time.time()
    pending = []
    for i in range(n_shards):
        marker = parts / shard_name(i) / "done.json"
        if not (marker.is_file() and read_json(marker).get("part_key") == part_key):
            pending.append(shard_name(i))
    done, redone = n_shards - len(pending), len(pending)
    if pending:
        if log:
            log(f"embed: {len(pending)} of {n_shards} shards with clip-retrieval ({clip_model})")
        bar = tqdm(total=n_shards, initial=done, desc="embed: shards", unit="shard", disable=not progress, leave=False)

        def poll() -> None:
            bar.n = sum((parts / s / "done.json").is_file() for s in [shard_name(i) for i in range(n_shards)])
            bar.refresh()

        spec = {"parts_dir": str(parts.resolve()), "shards_dir": str(shards_dir.resolve()), "shards": pending,
                "clip_model": clip_model, "part_key": part_key, "batch_size": cfg.encoder.inference_batch_size,
                "num_workers": cfg.encoder.num_workers, "model_configs": [str(p) for p in model_configs]}
        try:
            run_module("cocu_core.embed_runner", spec, out / "embed_spec.json", out / "clip_inference.log", poll)
        finally:
            bar.close()
    infer_s = time.time() - t0
    imgs, txts, metas = [], [], []
    for i in range(n_shards):
        img, txt, meta = read_part(parts / shard_name(i), shard_name(i))
        imgs.append(img), txts.append(txt), metas.append(meta)
    dim = max((a.shape[1] for a in imgs if a.ndim == 2 and a.shape[0]), default=0)
    img_all = l2_normalise(np.concatenate([a.reshape(-1, dim) for a in imgs]) if dim else np.zeros((0, 0)))
    txt_all = l2_normalise(np.concatenate([a.reshape(-1, dim) for a in txts]) if dim else np.zeros((0, 0)))
    meta_all = pa.concat_tables(metas) if metas else METADATA_SCHEMA.empty_table().drop(["row"])
    order = np.argsort(np.array(meta_all.column("key").to_pylist(), dtype=object), kind="stable") if meta_all.num_rows else np.zeros(0, int)
    img_all, txt_all = img_all[order], txt_all[order]
    meta_all = meta_all.take(pa.array(order, pa.int64()))
    meta_all = meta_all.add_column(0, "row", pa.array(np.arange(meta_all.num_rows), pa.int64()))
    keys = meta_all.column("key").to_pylist()
    if len(set(keys)) != len(keys):
        raise RuntimeError("duplicate sample keys in the embeddings; the download shards are inconsistent")
    save_npy_atomic(out / "img_emb.npy", img_all)
    save_npy_atomic(out / "text_emb.npy", txt_all)
    write_parquet_atomic(out / "metadata.parquet", meta_all, METADATA_SCHEMA, 1, {"clip_model": clip_model})
    expected = int(dl["counts"]["success"])
    report = {"embedded": len(keys), "downloaded": expected, "skipped_unreadable": expected - len(keys), "dim": dim,
              "shards": n_shards, "shards_reused": done, "shards_embedded": redone, "seconds": round(infer_s, 2),
              "samples_per_s": round(len(keys) / infer_s, 1) if redone and infer_s > 0 else None}
    if log:
        log(f"embed: {len(keys)} samples x {dim} dims from {n_shards} shards ({done} reused) in {infer_s:.1f}s")
    write_manifest(out, "embed", inputs_fp, fields, counts={"embedded": len(keys), "dim": dim, "shards": n_shards},
                   extra={"report": report, "clip_model": clip_model, "runtime": cfg.fields_for(RUNTIME_FIELDS)})
    return {**report, "cached": False}


def load_embeddings(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Why: later stages read (img_emb, text_emb, metadata) together and trust their alignment."""
    out = Path(out_dir)
    if not (out / "manifest.json").is_file():
        raise FileNotFoundError(f"no finished embed stage in {out}; run the embed stage first")
    return np.load(out / "img_emb.npy"), np.load(out / "text_emb.npy"), pq.read_table(out / "metadata.parquet")
