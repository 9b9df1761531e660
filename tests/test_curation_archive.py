"""Archive round trip: write -> read, schema version and metadata present, atomic (no temp files)."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cocu_core.config import CurationConfig
from cocu_core.curation import (ARCHIVE_VERSION, ArchiveError, ArchiveReader, ConceptSampler, archive_metadata, curate,
                                write_archive)
from cocu_core.io import parquet_metadata, parquet_schema_version, write_parquet_atomic

from curation_fixtures import random_inputs


def test_archive_round_trip(tmp_path):
    keys, caps, csr, img, cap, T, names = random_inputs(n=60)
    cfg = CurationConfig(variant="cocu", batch_size=16)
    shards = [np.arange(0, 30), np.arange(30, 60)]
    tables = []
    for i, rows in enumerate(shards):
        t = curate(keys, caps, csr, img, cap, T, cfg, concept_names=names, query_rows=rows)
        write_archive(tmp_path / f"{i:05d}.parquet", t, archive_metadata(cfg, "open_clip:toy/abc", "vocab123"))
        tables.append(t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.parquet", "00001.parquet"]  # no temp files
    f = tmp_path / "00000.parquet"
    assert parquet_schema_version(f) == ARCHIVE_VERSION
    meta = parquet_metadata(f)
    assert meta["encoder"] == "open_clip:toy/abc" and meta["variant"] == "cocu" and meta["code_version"]
    assert '"n_neighbours": 8' in meta["config"] and meta["vocabulary"] == "vocab123"
    assert pq.read_table(f).to_pylist() == tables[0].to_pylist()

    reader = ArchiveReader(tmp_path)
    assert len(reader) == 60 and "s00045" in reader
    row = tables[1].to_pylist()[15]
    e = reader.get("s00045")
    assert e.key == row["key"] and e.caption == row["caption"] and e.concepts == row["concepts"]
    np.testing.assert_allclose(e.scores, row["t2v_scores"])
    assert list(e.cluster_ids) == row["cluster_ids"] and e.neighbour_keys == row["neighbour_keys"]
    picks = ConceptSampler(reader.variant, k=3, seed=0).sample(e)
    assert len(picks) == 3 and set(picks) <= set(e.concepts) | {e.caption}
    with pytest.raises(ArchiveError, match="'nope'"):
        reader.get("nope")


def test_reader_refuses_other_schema_versions_and_empty_folders(tmp_path):
    keys, caps, csr, img, cap, T, names = random_inputs(n=10)
    t = curate(keys, caps, csr, img, cap, T, CurationConfig(variant="v2"), concept_names=names)
    with pytest.raises(ArchiveError, match="no archive shards"):
        ArchiveReader(tmp_path)
    write_parquet_atomic(tmp_path / "old.parquet", t, schema_version=ARCHIVE_VERSION + 1)
    with pytest.raises(ArchiveError, match="schema version"):
        ArchiveReader(tmp_path)


def test_naive_variant_reader_uses_naive_scores(tmp_path):
    keys, caps, csr, img, cap, T, names = random_inputs(n=20)
    cfg = CurationConfig(variant="v2")
    t = curate(keys, caps, csr, img, cap, T, cfg, concept_names=names)
    write_archive(tmp_path / "a.parquet", t, archive_metadata(cfg, "enc"))
    reader = ArchiveReader(tmp_path)
    e = reader.get(keys[4])
    np.testing.assert_allclose(e.scores, t.to_pylist()[4]["naive_scores"])
    assert e.cluster_ids is None
    assert list(e.scores) == sorted(e.scores, reverse=True)


# --- the version-1 format is frozen ----------------------------------------------------------------------------------
# A literal copy of the v1 schema and a v1 file checked into tests/data (written once by write_archive at version 1):
# a change to ARCHIVE_SCHEMA without a version bump, or a reader that no longer reads what v1 wrote, fails here.
V1_SCHEMA = [("key", "string", False), ("caption", "string", True), ("caption_concept_ids", "list<item: int32>", True),
             ("concept_ids", "list<item: int32>", True), ("concepts", "list<item: string>", True),
             ("naive_scores", "list<item: float>", True), ("t2v_scores", "list<item: float>", True),
             ("cluster_ids", "list<item: int16>", True), ("neighbour_keys", "list<item: string>", True)]
V1_FILE = Path(__file__).parent / "data" / "archive_v1" / "archive_00000.parquet"
V1_SHA256 = "ae9fc825c6e1072a41aca711c15a173cf448e508dffe605a350cc2a8651a43f6"


def test_archive_schema_of_version_1_is_frozen():
    from cocu_core.curation.archive import ARCHIVE_SCHEMA

    if ARCHIVE_VERSION == 1:
        assert [(f.name, str(f.type), f.nullable) for f in ARCHIVE_SCHEMA] == V1_SCHEMA
    else:  # a new version must still read v1 files or refuse them clearly (ArchiveReader's version check)
        with pytest.raises(ArchiveError, match="schema version"):
            ArchiveReader(V1_FILE.parent)


def test_a_checked_in_version_1_archive_is_read_by_the_current_reader():
    assert hashlib.sha256(V1_FILE.read_bytes()).hexdigest() == V1_SHA256  # the fixture itself never rewritten
    assert parquet_schema_version(V1_FILE) == 1
    meta = parquet_metadata(V1_FILE)
    assert meta["encoder"] == "open_clip:cocu-tiny/frozen-v1" and meta["vocabulary"] == "vocab-v1"
    if ARCHIVE_VERSION != 1:
        pytest.skip("the reader is past version 1; test_archive_schema_of_version_1_is_frozen checks it refuses v1")
    reader = ArchiveReader(V1_FILE.parent)
    assert reader.variant == "cocu" and len(reader) == 3 and list(reader.keys()) == ["000000000", "000000001",
                                                                                      "000000002"]
    e = reader.get("000000000")
    assert (e.caption, e.concepts, e.concept_ids.tolist()) == ("a red kite over the beach", ["kite", "sand", "sky"],
                                                               [4, 2, 7])
    np.testing.assert_allclose(e.scores, [1.75, 1.5, 1.25])  # cocu reads the t2v scores
    assert e.cluster_ids.tolist() == [0, 1, 1] and e.caption_concept_ids.tolist() == [4]
    assert e.neighbour_keys == ["000000002", "000000001"]
    empty = reader.get("000000002")
    assert empty.concepts == [] and empty.caption == "" and ConceptSampler("cocu", k=2).sample(empty) == ["", ""]
    # the sampler draws from the v1 clusters: one concept of each of the 2 clusters, then the caption pads
    drawn = ConceptSampler("cocu", k=3, seed=0).sample(e)
    assert drawn[0] in {"kite", "sand", "sky"} and drawn[2] == e.caption
    assert {drawn[0], drawn[1]} & {"kite"} and len({drawn[0], drawn[1]} & {"sand", "sky"}) == 1
