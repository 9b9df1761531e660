"""Training-data fixtures shared by the data and loop tests: real webdataset tars and real concept archives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from cocu_core.config import CurationConfig
from cocu_core.curation import ARCHIVE_SCHEMA, archive_metadata, write_archive

SIZE = 32
NOUNS = ["dog", "ball", "tree", "car", "sky", "grass", "boat", "cat"]


def colour(i: int) -> tuple[int, int, int]:
    return (20 + (i * 37) % 200, 20 + (i * 71) % 200, 20 + (i * 13) % 200)


def caption_of(i: int) -> str:
    if i % 10 == 9:
        return "and then"  # no noun at all: GV pads every prompt with the caption
    return f"a {NOUNS[i % 8]} next to a {NOUNS[(i + 3) % 8]} under the {NOUNS[(i + 5) % 8]}"


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour(i)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def key_of(i: int) -> str:
    return f"{i // 100:05d}{i % 100:04d}"


def write_shards(d: Path, n: int, per_shard: int = 12, corrupt=(), no_image=()) -> list[str]:
    """img2dataset's layout: NNNNN.tar with <key>.jpg/.txt/.json, plus the per-shard files it writes beside."""
    d.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(0, n, per_shard):
        with tarfile.open(d / f"{s // per_shard:05d}.tar", "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                k = key_of(i)
                keys.append(k)
                members = {"txt": caption_of(i).encode(), "json": json.dumps({"key": k, "status": "success"}).encode()}
                if i not in no_image:
                    members["jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg" * 4 if i in corrupt else jpeg(i)
                for ext in ("jpg", "txt", "json"):
                    if ext in members:
                        info = tarfile.TarInfo(f"{k}.{ext}")
                        info.size = len(members[ext])
                        tf.addfile(info, io.BytesIO(members[ext]))
        (d / f"{s // per_shard:05d}_stats.json").write_text("{}")
    return keys


def archive_row(i: int, n_concepts: int = 5) -> dict:
    rng = np.random.default_rng(i)
    ids = rng.choice(40, n_concepts, replace=False).astype(np.int32)
    scores = np.sort(rng.random(n_concepts).astype(np.float32))[::-1]
    return {"key": key_of(i), "caption": caption_of(i), "caption_concept_ids": ids[:1].tolist(),
            "concept_ids": ids.tolist(), "concepts": [f"concept{c}" for c in ids],
            "naive_scores": scores[::-1].copy().tolist(), "t2v_scores": scores.tolist(),
            "cluster_ids": [j % 3 for j in range(n_concepts)], "neighbour_keys": []}


def write_arch(d: Path, rows: list[dict], variant: str = "cocu", per_file: int = 10, **cur) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = CurationConfig(variant=variant, **cur)
    if not rows:
        write_archive(d / "00000.parquet", pa.Table.from_pylist([], schema=ARCHIVE_SCHEMA), archive_metadata(cfg, "enc"))
    for s in range(0, len(rows), per_file):
        part = [dict(r) for r in rows[s:s + per_file]]
        if variant != "cocu":
            for r in part:
                r["cluster_ids"] = None
        write_archive(d / f"{s // per_file:05d}.parquet", pa.Table.from_pylist(part, schema=ARCHIVE_SCHEMA),
                      archive_metadata(cfg, "enc"))
    return d
