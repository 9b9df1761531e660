"""Incremental re-curation (issue 24 part 4) on the real toy world, stage by stage through the registry: 200 pairs
curated, 40 more appended to the list (a new shard), re-curated; against a full curation of the same 240 (the same embeddings,
vocabulary and concept embeddings copied into a fresh work folder, the index built and every row curated there).

  - exact search: the incremental archives equal the full ones row for row, every column, though most earlier rows
    were carried over;
  - an approximate (IVF) index, grown by the new vectors with its coarse quantiser kept: the rows that differ from the
    full curation (its index trained afresh) are exactly those whose neighbour lists differ.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import small_config
from cocu_core.stages import get
from cocu_core.stages.base import Context
from cocu_core.toyworld import read_pairs

pytestmark = pytest.mark.slow
EMBEDDED = ("download", "encoder", "embed")
LATER = ("index", "vocabulary", "concepts", "curate")
COPIED = ("download", "encoder", "embed", "vocabulary", "concept_emb")


def _cfg(root: Path, name: str, weights: Path, world_dir: Path, **index):
    return small_config(root / name, name=name,
                        data={"source": "url_list", "url_list": str(root / "list.parquet"), "shard_size": 40},
                        encoder={"pretrained": str(weights), "train_toy": False}, index={"recall_sample": 100, **index},
                        eval={"class_names": str(world_dir / "val" / "class_names.txt")})


def _run(cfg, names) -> dict:
    ctx = Context(cfg, log=lambda m: None, progress=False)
    return {n: get(n).run(ctx) for n in names}


def _archives(cfg) -> pa.Table:
    folder = cfg.workpath / "curate" / "cocu"
    t = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("archive_*.parquet"))])
    return t.take(pa.compute.sort_indices(t, [("key", "ascending")]))


@pytest.fixture(scope="module")
def embedded(world_dir, toy_encoder_weights, tmp_path_factory):
    """Why: the 200-pair download and embeddings, then the grown 240-pair ones (the same download generation: one new
    shard), made once for both index kinds; returns the folder holding both states and the grown run's reports."""
    tmp = tmp_path_factory.mktemp("inc_embedded")
    pairs = read_pairs(world_dir / "train").to_pylist()
    rows = [{"url": (world_dir / "train" / p["file"]).as_uri(), "caption": p["caption"], "key": p["key"]}
            for p in pairs]
    cfg = _cfg(tmp, "base", toy_encoder_weights, world_dir)
    for state, n in (("a", 200), ("b", 240)):  # 40 pairs appended to the same list
        pq.write_table(pa.Table.from_pylist(rows[:n]), tmp / "list.parquet")
        reports = _run(cfg, EMBEDDED)
        for d in EMBEDDED:
            shutil.copytree(cfg.workpath / d, tmp / state / d)
    return tmp, reports


def _state(src: Path, work: Path) -> None:
    """Why: one embedded state's download, encoder and embed folders in a work folder, replacing what it held."""
    for d in EMBEDDED:
        shutil.rmtree(work / d, ignore_errors=True)
        shutil.copytree(src / d, work / d)


def _grow_then_full(tmp: Path, embedded, world_dir: Path, weights: Path, **index) -> tuple[dict, dict, pa.Table, pa.Table]:
    """Why: (the re-curation's reports, the full one's, both archives sorted by key)."""
    root, grown_embed = embedded
    inc = _cfg(tmp, "inc", weights, world_dir, **index)
    _state(root / "a", inc.workpath)
    _run(inc, LATER)
    _state(root / "b", inc.workpath)  # the list grew: new shard downloaded and embedded, earlier ones untouched
    grown = {**grown_embed, **_run(inc, LATER)}
    full = _cfg(tmp, "full", weights, world_dir, **index)
    for d in COPIED:
        shutil.copytree(inc.workpath / d, full.workpath / d)
    fresh = _run(full, ("index", "curate"))
    return grown, fresh, _archives(inc), _archives(full)


def _equal_rows(a: pa.Table, b: pa.Table) -> np.ndarray:
    """Why: per row, every column equal (floats to the last bit)."""
    same = np.ones(a.num_rows, bool)
    for name in a.schema.names:
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        same &= np.array([u == v for u, v in zip(x, y)])
    return same


@pytest.fixture(scope="module")
def exact(embedded, world_dir, toy_encoder_weights, tmp_path_factory):
    return _grow_then_full(tmp_path_factory.mktemp("inc_exact"), embedded, world_dir, toy_encoder_weights)


def test_incremental_recuration_with_exact_search_equals_a_full_one(exact):
    grown, fresh, inc, full = exact
    cur = grown["curate"]
    assert grown["download"]["n_shards"] == 6 and grown["embed"]["shards_embedded"] == 1
    assert grown["index"]["image"]["grown_from"] == 200 and grown["index"]["image"]["index_key"] == "Flat"
    assert fresh["index"]["image"]["grown_from"] is None
    # 40 new rows curated in a new shard; of the 200 earlier rows some are recomputed, the rest carried over
    assert cur["carried"] > 0 and cur["new_neighbour"] > 0
    assert cur["recomputed"] + cur["carried"] == 240 and cur["recomputed"] >= 40
    assert fresh["curate"]["recomputed"] == 240 and fresh["curate"]["carried"] == 0
    print(f"\nexact search: {cur['recomputed']} of 240 rows recomputed ({cur['new_neighbour']} earlier rows gained a "
          f"new neighbour, {cur['concepts_changed']} had changed concepts), {cur['carried']} carried over")
    assert inc.column("key").to_pylist() == full.column("key").to_pylist()
    same = _equal_rows(inc, full)
    assert same.all(), inc.filter(pa.array(~same)).slice(0, 3).to_pylist()


@pytest.fixture(scope="module")
def approximate(embedded, world_dir, toy_encoder_weights, tmp_path_factory):
    # IVF from 100 vectors on, about 16 a list over 200, grown to 240 (1.2x: the quantiser is kept)
    return _grow_then_full(tmp_path_factory.mktemp("inc_ivf"), embedded, world_dir, toy_encoder_weights, exact_below=100,
                           list_size=16, train_per_list=8)


def test_with_a_grown_ivf_index_only_rows_whose_neighbours_differ_differ(approximate):
    grown, fresh, inc, full = approximate
    g, f = grown["index"]["image"], fresh["index"]["image"]
    assert g["index_key"].startswith("IVF") and g["grown_from"] == 200 and g["added"] == 40
    assert g["trained_vectors"] == 200 and f["trained_vectors"] == 240 and f["grown_from"] is None
    assert g["recall@8"] >= 0.95 and g["target_met"]
    cur = grown["curate"]
    assert cur["carried"] > 0 and cur["recomputed"] + cur["carried"] == 240
    assert inc.column("key").to_pylist() == full.column("key").to_pylist()
    same_nb = np.array([a == b for a, b in zip(inc.column("neighbour_keys").to_pylist(),
                                               full.column("neighbour_keys").to_pylist())])
    same = _equal_rows(inc, full)
    print(f"\ngrown IVF index ({g['index_key']}, {g['index_param']}, recall@8 {g['recall@8']}) against one trained "
          f"on all 240 ({f['index_key']}, {f['index_param']}): {int((~same_nb).sum())} of 240 rows have other "
          f"neighbour lists; {cur['recomputed']} rows recomputed, {cur['carried']} carried")
    assert (same == same_nb).all(), inc.filter(pa.array(same != same_nb)).slice(0, 2).to_pylist()
