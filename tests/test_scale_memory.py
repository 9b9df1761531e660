"""Memory bounded by the batch: a synthetic corpus in the embed stage's real part format is assembled into
memory-mapped arrays, the curation inputs are a handle on files (small when pickled), and the archives a shard
task writes equal `curate` over the whole corpus held in memory."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_scale import ENCODER_FP, small_run  # noqa: E402

from cocu_core.concepts.corpus import metadata_rows  # noqa: E402
from cocu_core.concepts.extract import ConceptExtractor  # noqa: E402
from cocu_core.concepts.vocabulary import count_candidates  # noqa: E402
from cocu_core.curation import curate  # noqa: E402
from cocu_core.stages.curate import curate_shard_stage, curation_upstream_fp
from cocu_core.curation.data import load_curation_data, shard_names
from cocu_core.embeddings.store import l2_normalise, load_embeddings  # noqa: E402
from cocu_core.index import load_index  # noqa: E402
from cocu_core.index.build import exact_search  # noqa: E402

N, SHARD = 960, 240


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scale")
    cfg, emb = small_run(root, N, SHARD)
    return root, cfg, emb


def test_assembly_is_memory_mapped_key_sorted_and_equal_to_the_parts(run):
    root, _, _ = run
    img, txt, meta = load_embeddings(root / "embed")
    assert isinstance(img, np.memmap) and isinstance(txt, np.memmap) and img.shape == (N, 512)
    keys = meta.column("key").to_pylist()
    assert keys == sorted(keys) and len(set(keys)) == N and meta.column("row").to_pylist() == list(range(N))
    row_of = {k: i for i, k in enumerate(keys)}
    for part in sorted((root / "embed" / "parts").iterdir()):
        pk = pq.read_table(part / "metadata" / "metadata_0.parquet").column("key").to_pylist()
        assert pk != sorted(pk)  # the writer shuffles rows: the assembly must sort them
        rows = [row_of[k] for k in pk]
        assert np.array_equal(img[rows], l2_normalise(np.load(part / "img_emb" / "img_emb_0.npy")))
        assert np.array_equal(txt[rows], l2_normalise(np.load(part / "text_emb" / "text_emb_0.npy")))
        assert set(meta.column("shard").to_numpy(zero_copy_only=False)[rows]) == {part.name}


def test_shard_task_equals_curate_over_the_corpus_in_memory(run, tmp_path):
    root, cfg, emb = run
    data = load_curation_data(root / "embed", root / "vocabulary", emb, cfg.curation.max_ngram)
    blob = pickle.dumps(data)
    assert len(blob) < emb.nbytes + 20_000  # paths and concept embeddings, not the corpus
    data = pickle.loads(blob)
    _, _, meta = load_embeddings(root / "embed")
    captions = [c or "" for c in meta.column("caption").to_pylist()]
    offsets, ids = ConceptExtractor(data.concepts, cfg.curation.max_ngram).extract_many(captions)
    assert np.array_equal(data.offsets, offsets) and np.array_equal(data.ids, ids)
    assert data.key_array.to_pylist() == meta.column("key").to_pylist()
    index = load_index(root / "index", "image", embed_dir=root / "embed")
    img = np.array(data.img_emb)
    upstream = curation_upstream_fp(cfg, ENCODER_FP)
    assert shard_names(data) == ["00000", "00001", "00002", "00003"]
    for shard in shard_names(data):
        rep = curate_shard_stage(data, shard, tmp_path, cfg, upstream, ENCODER_FP, index, None)
        rows = np.flatnonzero(meta.column("shard").to_numpy(zero_copy_only=False) == shard)
        assert rep["images"] == len(rows) == SHARD and not rep["cached"]
        want = curate(meta.column("key").to_pylist(), captions, (offsets, ids), img, None, emb, cfg.curation, index,
                      concept_names=data.concepts, query_rows=rows)
        got = pq.read_table(tmp_path / f"archive_{shard}.parquet")
        assert got.equals(want.cast(got.schema)), shard
        assert sum(len(c) for c in got.column("concepts").to_pylist()) > 2 * len(rows)  # expansion found concepts
    again = curate_shard_stage(data, "00001", tmp_path, cfg, upstream, ENCODER_FP, index, None)
    assert again["cached"]


def test_vocabulary_counts_do_not_depend_on_chunking(run):
    root, _, _ = run
    caps = pq.read_table(root / "embed" / "metadata.parquet", columns=["caption"]).column("caption").to_pylist()[:300]
    caps += caps[:40] + [None, ""]  # repeats across chunks, and empty captions
    assert count_candidates(caps, 3, chunk=7) == count_candidates(caps, 3, chunk=10**6)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_in_blocks_equals_one_flat_index(metric):
    import faiss

    rng = np.random.default_rng(0)
    x = l2_normalise(rng.standard_normal((3000, 32)))
    q = x[rng.choice(3000, 50, replace=False)] + 0.01
    d, i = exact_search(x, q, 8, metric, chunk=500)
    flat = faiss.IndexFlatIP(32) if metric == "ip" else faiss.IndexFlatL2(32)
    flat.add(x)
    d2, i2 = flat.search(np.ascontiguousarray(q, np.float32), 8)
    assert np.array_equal(i, i2) and np.allclose(d, d2, atol=1e-5)


def test_metadata_rows_reads_a_range_across_row_groups(run, tmp_path):
    root, _, _ = run
    full = pq.read_table(root / "embed" / "metadata.parquet")
    assert pq.ParquetFile(root / "embed" / "metadata.parquet").metadata.num_row_groups == N // SHARD
    f = tmp_path / "m.parquet"
    pq.write_table(full, f, row_group_size=100)  # ranges that straddle row groups
    for a, b in ((0, 1), (95, 205), (240, 480), (900, 960), (7, 7)):
        got = metadata_rows(f, a, b, ["key", "caption"])
        assert got.equals(full.select(["key", "caption"]).slice(a, b - a)), (a, b)
    assert metadata_rows(f, 0, 0, ["key"]).num_rows == 0 and isinstance(got, pa.Table)
