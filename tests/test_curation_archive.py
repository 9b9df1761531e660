"""Archive round trip: write -> read, schema version and metadata present, atomic (no temp files)."""

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
