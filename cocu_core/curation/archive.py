"""The concept archive on disk: one Parquet file per input shard with a declared, versioned schema.

Rows are in the shard's sample order. List columns are aligned per row and ordered by the variant's
ranking score (descending, ties by concept id). ``cluster_ids`` is null unless the variant samples
by clusters. File metadata records the encoder, the config fields used and the code version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core import __version__
from cocu_core.config import CurationConfig
from cocu_core.errors import CocuError
from cocu_core.io import parquet_metadata, parquet_schema_version, write_parquet_atomic

ARCHIVE_VERSION = 1
ARCHIVE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("caption_concept_ids", pa.list_(pa.int32())),
        pa.field("concept_ids", pa.list_(pa.int32())),
        pa.field("concepts", pa.list_(pa.string())),
        pa.field("naive_scores", pa.list_(pa.float32())),
        pa.field("t2v_scores", pa.list_(pa.float32())),
        pa.field("cluster_ids", pa.list_(pa.int16())),
        pa.field("neighbour_keys", pa.list_(pa.string())),
    ]
)


class ArchiveError(ValueError, CocuError):
    """An archive this code cannot read, or a key it does not hold."""


ALGORITHM_VERSION = 3  # bump when the same inputs and settings curate differently; part of the stage cache key


def archive_metadata(cfg: CurationConfig, encoder_id: str, vocabulary_fingerprint: str = "") -> dict[str, Any]:
    """Why: an archive says which encoder, vocabulary, curation settings and code produced it."""
    return {
        "code_version": f"{__version__}+curation{ALGORITHM_VERSION}",
        "encoder": encoder_id,
        "vocabulary": vocabulary_fingerprint,
        "variant": cfg.variant,
        "config": cfg.model_dump(mode="json"),
    }


def write_archive(path: str | Path, table: pa.Table, metadata: Optional[dict[str, Any]] = None) -> None:
    """Why: atomic, schema-checked write of one shard's archive."""
    write_parquet_atomic(path, table, ARCHIVE_SCHEMA, ARCHIVE_VERSION, metadata)


@dataclass(frozen=True)
class ArchiveEntry:
    """What the training loader needs for one sample."""

    key: str
    caption: str
    concepts: list[str]
    concept_ids: np.ndarray
    scores: np.ndarray  # the variant's ranking score (t2v or naive), aligned with concepts
    cluster_ids: Optional[np.ndarray]
    caption_concept_ids: np.ndarray
    neighbour_keys: list[str]


def archive_files(directory: str | Path) -> list[Path]:
    """Why: shards in name order, temp files from interrupted writes ignored."""
    return sorted(p for p in Path(directory).glob("*.parquet") if not p.name.startswith("."))


class ArchiveReader:
    """Random access by sample key over a folder of archive shards."""

    def __init__(self, directory: str | Path):
        files = archive_files(directory)
        if not files:
            raise ArchiveError(f"no archive shards (*.parquet) in {directory}")
        tables, self.metadata = [], {}
        for f in files:
            v = parquet_schema_version(f)
            if v != ARCHIVE_VERSION:
                raise ArchiveError(f"{f}: archive schema version {v}, expected {ARCHIVE_VERSION}")
            tables.append(pq.read_table(f, schema=ARCHIVE_SCHEMA))
            self.metadata = self.metadata or parquet_metadata(f)
        self.table = pa.concat_tables(tables)
        self.variant = self.metadata.get("variant", "cocu")
        config = json.loads(self.metadata.get("config", "{}") or "{}")
        self.ranking = "naive" if self.variant in ("baseline", "v1", "v2") else "t2v"
        self.config = config
        keys = self.table.column("key").to_pylist()
        self._row = {k: i for i, k in enumerate(keys)}
        if len(self._row) != len(keys):
            seen: set[str] = set()
            dup = [k for k in keys if k in seen or seen.add(k)]
            raise ArchiveError(f"duplicate sample keys across shards of {directory}: {dup[:5]}")
        self._cols = {name: self.table.column(name) for name in ARCHIVE_SCHEMA.names}

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def keys(self) -> Iterator[str]:
        """Why: the loader iterates over the samples the archive holds."""
        return iter(self._row)

    def get(self, key: str) -> ArchiveEntry:
        """Why: the concepts, scores, clusters and caption one training step needs."""
        i = self._row.get(key)
        if i is None:
            raise ArchiveError(f"sample key {key!r} is not in this archive")
        c = {name: col[i].as_py() for name, col in self._cols.items()}
        score = c["t2v_scores"] if self.ranking == "t2v" else c["naive_scores"]
        return ArchiveEntry(
            key=c["key"],
            caption=c["caption"] or "",
            concepts=c["concepts"] or [],
            concept_ids=np.asarray(c["concept_ids"] or [], np.int64),
            scores=np.asarray(score or [], np.float64),
            cluster_ids=None if c["cluster_ids"] is None else np.asarray(c["cluster_ids"], np.int64),
            caption_concept_ids=np.asarray(c["caption_concept_ids"] or [], np.int64),
            neighbour_keys=c["neighbour_keys"] or [],
        )
