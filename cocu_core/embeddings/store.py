"""Embedding files: clip-retrieval's per-shard parts, checked from their headers and assembled into row-aligned,
L2-normalised arrays that later stages memory-map; readers for those arrays and their metadata.

Why here and not in the stage: the index, curation, the encoder report and the scale benchmarks read the
same files; only `stages/embed.py` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core import __version__
from cocu_core.errors import CocuError
from cocu_core.io import SCHEMA_VERSION_KEY, atomic_path, read_manifest

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
ARRAYS = {"image": "img_emb.npy", "caption": "text_emb.npy"}


class EmbeddingFileError(ValueError, CocuError):
    """An embedding or metadata file that is truncated, misaligned or inconsistent; the message names it."""


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


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Why: shape and dtype of a .npy without reading it, refusing a file shorter or longer than its header says."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except FileNotFoundError:
        raise EmbeddingFileError(f"embedding file missing: {p}") from None
    except (ValueError, OSError, SyntaxError) as exc:
        raise EmbeddingFileError(f"{p} is not a readable .npy file ({type(exc).__name__}: {exc})") from None
    if fortran or len(shape) != 2:
        raise EmbeddingFileError(f"{p}: expected a C-ordered 2-d array, got shape {shape}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = p.stat().st_size
    if size != expected:
        raise EmbeddingFileError(f"{p} is truncated or corrupt: {size} bytes, its header ({shape[0]} x {shape[1]} "
                                 f"{dtype}) needs {expected}; re-run the stage that wrote it")
    return shape, dtype


def open_npy(path: str | Path) -> np.ndarray:
    """Why: a checked, read-only memory map: pages come from the file (the kernel may drop them), not the heap."""
    shape, _ = npy_header(path)
    if shape[0] == 0:
        return np.load(path)
    return np.load(path, mmap_mode="r")


def part_files(part: Path) -> tuple[Path, Path, Path]:
    """Why: where clip-retrieval puts one shard's image, text and metadata outputs."""
    return part / "img_emb/img_emb_0.npy", part / "text_emb/text_emb_0.npy", part / "metadata/metadata_0.parquet"


def check_part(part: Path, shard: str) -> tuple[int, int]:
    """Why: (rows, dim) of one shard's clip-retrieval output from headers only; a truncated file, or arrays and
    metadata of different lengths, fail here naming the file, before the stage writes anything."""
    img_f, txt_f, meta_f = part_files(part)
    if not meta_f.is_file():  # a shard with no decodable sample: clip-retrieval writes nothing
        return 0, 0
    (ni, di), _ = npy_header(img_f)
    (nt, dt), _ = npy_header(txt_f)
    try:
        nm = pq.read_metadata(meta_f).num_rows
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingFileError(f"{meta_f} is not a readable Parquet file ({exc})") from None
    if not (ni == nt == nm):
        worst = img_f if ni != nm else txt_f
        raise EmbeddingFileError(f"clip-retrieval output of shard {shard} is misaligned: {worst} has "
                                 f"{ni if worst == img_f else nt} rows, {meta_f} has {nm}; delete {part} and re-run embed")
    if di != dt:
        raise EmbeddingFileError(f"shard {shard}: image ({img_f}) and text ({txt_f}) embeddings differ in width: {di} vs {dt}")
    return ni, di


def read_part(part: Path, shard: str, dim_hint: int = 0) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Why: one shard's embeddings and metadata, checked to be aligned row by row."""
    img_f, txt_f, meta_f = part_files(part)
    if not meta_f.is_file():
        empty = np.zeros((0, dim_hint), np.float32)
        return empty, empty, METADATA_SCHEMA.empty_table().drop(["row"])
    check_part(part, shard)
    img, txt = np.load(img_f), np.load(txt_f)
    meta = pq.read_table(meta_f)
    keys = meta.column("image_path").to_pylist()
    if "key" in meta.column_names and keys != meta.column("key").to_pylist():
        raise EmbeddingFileError(f"{meta_f}: image_path and key columns disagree")
    cols = meta.column_names
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "sample_id": meta.column("sample_id").cast(pa.string()) if "sample_id" in cols else pa.nulls(len(keys), pa.string()),
        "caption": meta.column("caption").cast(pa.string()),
        "url": meta.column("url").cast(pa.string()) if "url" in cols else pa.nulls(len(keys), pa.string()),
        "shard": pa.array([shard] * len(keys), pa.string()),
    })
    return img, txt, table


def metadata_schema(clip_model: str) -> pa.Schema:
    """Why: the metadata file says which schema version, code version and model wrote it."""
    return METADATA_SCHEMA.with_metadata({SCHEMA_VERSION_KEY: b"1", b"cocu.code_version": __version__.encode(),
                                          b"cocu.clip_model": clip_model.encode()})


def _open_output(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Why: the final array is written in place, shard by shard (numpy cannot map an empty file: save it whole)."""
    if shape[0] * shape[1] == 0:
        with open(path, "wb") as f:
            np.save(f, np.zeros(shape, np.float32))
        return np.zeros(shape, np.float32)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def assemble_parts(parts: Path, shards: Sequence[str], out: Path, clip_model: str) -> dict[str, Any]:
    """Why: parts -> the row-aligned arrays and metadata, one shard in memory at a time, all-or-nothing.

    Returns the row count, width and each shard's row range [start, end)."""
    sizes = {s: check_part(parts / s, s) for s in shards}
    dims = {d for n, d in sizes.values() if n}
    if len(dims) > 1:
        raise EmbeddingFileError(f"the parts in {parts} have different embedding widths {sorted(dims)}: "
                                 "they come from different encoders; delete them and re-run embed")
    dim = dims.pop() if dims else 0
    n = sum(r for r, _ in sizes.values())
    shard_rows: dict[str, list[int]] = {}
    schema = metadata_schema(clip_model)
    with atomic_path(out / ARRAYS["image"]) as tmp_img, atomic_path(out / ARRAYS["caption"]) as tmp_txt, \
            atomic_path(out / "metadata.parquet") as tmp_meta:
        img_all, txt_all = (_open_output(t, (n, dim)) for t in (tmp_img, tmp_txt))
        last_key: Optional[str] = None
        last_shard = ""
        row = 0
        with pq.ParquetWriter(tmp_meta, schema) as writer:
            for s in shards:
                img, txt, meta = read_part(parts / s, s, dim)
                k = len(img)
                shard_rows[s] = [row, row + k]
                if not k:
                    continue
                keys = meta.column("key").to_pylist()
                order = np.argsort(np.array(keys, dtype=object), kind="stable")
                sk = [keys[i] for i in order]
                dup = [a for a, b in zip(sk, sk[1:]) if a == b]
                if dup:
                    raise EmbeddingFileError(f"duplicate sample keys {dup[:5]} in shard {s} ({parts / s}); "
                                             "the download shards are inconsistent")
                if last_key is not None and sk[0] <= last_key:
                    raise EmbeddingFileError(f"shard {s} starts with key {sk[0]!r}, not after shard {last_shard}'s "
                                             f"last key {last_key!r}: keys must be unique and grouped by shard "
                                             "(img2dataset keys are); the download shards are inconsistent")
                img_all[row:row + k] = l2_normalise(img)[order]
                txt_all[row:row + k] = l2_normalise(txt)[order]
                table = meta.take(pa.array(order, pa.int64()))
                table = table.add_column(0, "row", pa.array(np.arange(row, row + k), pa.int64()))
                writer.write_table(table.cast(METADATA_SCHEMA).replace_schema_metadata(schema.metadata))
                last_key, last_shard, row = sk[-1], s, row + k
        for arr in (img_all, txt_all):
            if isinstance(arr, np.memmap):
                arr.flush()
        del img_all, txt_all
    return {"rows": n, "dim": dim, "shard_rows": shard_rows}


def embed_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Why: later stages need a finished embed stage; fail clearly when there is none."""
    m = read_manifest(out_dir)
    if not m:
        raise FileNotFoundError(f"no finished embed stage in {out_dir}; run the embed stage first")
    return m


def open_embeddings(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Why: (image, caption) embeddings memory-mapped, checked against each other and the metadata's row count."""
    out = Path(out_dir)
    embed_manifest(out)
    img, txt = open_npy(out / ARRAYS["image"]), open_npy(out / ARRAYS["caption"])
    meta_f = out / "metadata.parquet"
    try:
        rows = pq.read_metadata(meta_f).num_rows
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingFileError(f"{meta_f} is missing or not a readable Parquet file ({exc})") from None
    for name, arr in (("image", img), ("caption", txt)):
        if arr.shape[0] != rows:
            raise EmbeddingFileError(f"{out / ARRAYS[name]} has {arr.shape[0]} rows but {meta_f} has {rows}; "
                                     "re-run the embed stage")
    if img.shape != txt.shape:
        raise EmbeddingFileError(f"{out / ARRAYS['image']} {img.shape} and {out / ARRAYS['caption']} {txt.shape} differ")
    return img, txt


def shard_row_ranges(out_dir: str | Path) -> dict[str, tuple[int, int]]:
    """Why: a shard's rows are one contiguous range; read from the manifest (or the shard column if absent)."""
    m = embed_manifest(out_dir)
    if "shard_rows" in m:
        return {s: (int(a), int(b)) for s, (a, b) in m["shard_rows"].items() if b > a}
    shard = pq.read_table(Path(out_dir) / "metadata.parquet", columns=["shard"]).column("shard").to_numpy(zero_copy_only=False)
    out: dict[str, tuple[int, int]] = {}
    for s in sorted(set(shard.tolist())):
        idx = np.flatnonzero(shard == s)
        if len(idx) != idx[-1] - idx[0] + 1:
            raise EmbeddingFileError(f"{Path(out_dir) / 'metadata.parquet'}: rows of shard {s} are not contiguous")
        out[str(s)] = (int(idx[0]), int(idx[-1]) + 1)
    return out


def load_embeddings(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Why: later stages read (img_emb, text_emb, metadata) together and trust their alignment (arrays memory-mapped)."""
    img, txt = open_embeddings(out_dir)
    return img, txt, pq.read_table(Path(out_dir) / "metadata.parquet")
