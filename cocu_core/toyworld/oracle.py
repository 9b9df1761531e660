"""The oracle arm's concept archive (as a table): each downloaded toy image's ground-truth concepts, in the curation
format; `stages/curate.py:oracle_archive` writes it.

``<workdir>/curate/oracle/archive_NNNNN.parquet`` (one per download shard, readable by
:class:`~cocu_core.curation.archive.ArchiveReader`, archive variant ``oracle``) holds, per successfully
downloaded sample, the toy world's concepts of that image (score 1.0 each, ordered by class id) and, as
``caption_concept_ids``, the classes its caption names. Download keys are joined to toy sample ids
through the download stage's ``samples.parquet`` (img2dataset's ``sample_id`` column, which the toy
world's URL list fills with its pair key). ``manifest.json`` (written last) keys the archive by the toy
world's fingerprint and the download stage's cache key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.errors import CocuError
from cocu_core.io import read_json, read_manifest
from cocu_core.layout import stage_dir, toy_split
from cocu_core.toyworld.concepts import BY_NAME, CONCEPTS

ORACLE_VERSION = 1  # bump when the same world and download give a different archive
ORACLE_VARIANT = "oracle"


class OracleError(FileNotFoundError, CocuError):
    """The oracle archive cannot be built here: no toy world, or no finished download of its train split."""


def toy_world_fingerprint(cfg: PipelineConfig) -> str:
    """Why: ground truth exists only where the toy world was generated; refuse clearly everywhere else."""
    world = stage_dir(cfg, "toyworld") / "world.json"
    pairs = toy_split(cfg, "train") / "pairs.parquet"
    if not world.is_file() or not pairs.is_file():
        src = "" if cfg.data.source == "toyworld" else f" (data.source is {cfg.data.source!r})"
        raise OracleError(f"the oracle needs the toy world's ground truth, but {cfg.workpath} has no toy world"
                          f"{src}: {pairs} not found. The oracle arm exists only for data.source: toyworld, "
                          "after its toyworld stage (cocu run)")
    return str(read_json(world)["fingerprint"])


def download_key(cfg: PipelineConfig) -> str:
    """Why: the oracle's rows are the downloaded samples; a finished download stage is required."""
    download = stage_dir(cfg, "download")
    m = read_manifest(download)
    if not m or not (download / "samples.parquet").is_file():
        raise OracleError(f"no finished download stage in {download}; run the download stage "
                          "first (cocu run)")
    return str(m["cache_key"])


def oracle_inputs_fp(cfg: PipelineConfig) -> str:
    """Why: the archive changes only with the toy world or the download (shards, keys), never with other settings."""
    return fingerprint({"toyworld": toy_world_fingerprint(cfg), "download": download_key(cfg),
                        "version": ORACLE_VERSION})


def download_sample_ids(download_dir: Path) -> pa.Table:
    """Why: download key -> toy sample id (and shard, caption) of every successfully downloaded sample."""
    cols = ["key", "sample_id", "caption", "status", "shard"]
    t = pq.read_table(Path(download_dir) / "samples.parquet", columns=cols)
    return t.filter(pc.equal(t.column("status"), "success")).drop_columns(["status"])


def _class_ids(lists: pa.ChunkedArray | pa.Array, ids: dict[str, int]) -> pa.ListArray:
    """Why: a list column of toy class names as sorted class ids (unknown names are a generator bug: refused)."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    arr = pc.fill_null(arr, pa.scalar([], arr.type)) if arr.null_count else arr
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False)
    bad = sorted({str(n) for n in flat} - set(BY_NAME))
    if bad:
        raise OracleError(f"toy ground truth names unknown concept(s) {bad[:5]}")
    cid = np.array([ids[n] for n in flat], np.int32)
    parent = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
    order = np.lexsort((cid, parent))
    offsets = arr.offsets.to_numpy() - arr.offsets[0].as_py()
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(cid[order], pa.int32()))


def oracle_table(samples: pa.Table, pairs: pa.Table) -> pa.Table:
    """Why: one archive row per downloaded sample with ground truth, sorted by (shard, key); the shard column kept."""
    from cocu_core.curation.archive import ARCHIVE_SCHEMA

    row = pc.index_in(samples.column("sample_id"), value_set=pairs.column("key"))
    found = pc.is_valid(row)
    t = samples.filter(found).append_column("row", pc.drop_null(row))
    t = t.sort_by([("shard", "ascending"), ("key", "ascending")])
    gt = pairs.take(t.column("row"))
    ids = {c.name: c.id for c in CONCEPTS}
    concept_ids = _class_ids(gt.column("concepts"), ids)
    names = {c.id: c.name for c in CONCEPTS}
    flat = concept_ids.values.to_numpy(zero_copy_only=False)
    offsets = concept_ids.offsets
    concepts = pa.ListArray.from_arrays(offsets, pa.array([names[int(i)] for i in flat], pa.string()))
    ones = pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(flat), np.float32)))
    n = t.num_rows
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    cols = {"key": t.column("key"), "caption": t.column("caption"),
            "caption_concept_ids": _class_ids(gt.column("named"), ids), "concept_ids": concept_ids,
            "concepts": concepts, "naive_scores": ones, "t2v_scores": ones,
            "cluster_ids": pa.nulls(n, ARCHIVE_SCHEMA.field("cluster_ids").type), "neighbour_keys": empty}
    return pa.table({**cols, "shard": t.column("shard")})


