"""Index stage: real faiss builds, recall against exact search, self-retrieval, caching."""

from __future__ import annotations

import numpy as np

from ingest_fixtures import small_config
from cocu_core.embeddings.store import l2_normalise, save_npy_atomic
from cocu_core.stages.index import index_stage
from cocu_core.index import load_index, recall_at_k
from cocu_core.io import write_manifest


def fake_embed_stage(d, n=1500, dim=32, seed=0):
    """Why: the index stage only needs embed outputs; random clustered vectors stand in for them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, dim))
    img = l2_normalise(centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim)))
    txt = l2_normalise(rng.normal(size=(n, dim)))
    txt[1] = txt[0]  # a duplicate caption embedding
    save_npy_atomic(d / "img_emb.npy", img)
    save_npy_atomic(d / "text_emb.npy", txt)
    write_manifest(d, "embed", f"fake{seed}", {}, {"embedded": n})
    return img, txt


def test_index_stage_builds_measures_and_caches(tmp_path):
    emb = tmp_path / "embed"
    img, txt = fake_embed_stage(emb)
    cfg = small_config(tmp_path, index={"recall_sample": 200, "recall_k": 8})
    rep = index_stage(emb, tmp_path / "index", cfg)
    assert not rep["cached"]
    for name in ("image", "caption"):
        r = rep[name]
        assert r["vectors"] == 1500 and r["dim"] == 32 and r["index_key"] == "Flat" and r["recall_queries"] == 100  # half of 200: the other half tuned
        assert r["recall@8"] >= 0.9 and r["self_first"] == 1.0
        assert (tmp_path / "index" / f"{name}.index").is_file() and (tmp_path / "index" / f"{name}_infos.json").is_file()
    index = load_index(tmp_path / "index", "image")
    _, ids = index.search(img[[3, 500, 1499]], 5)
    assert ids[:, 0].tolist() == [3, 500, 1499]
    again = index_stage(emb, tmp_path / "index", cfg)
    assert again["cached"] and again["image"]["index_key"] == rep["image"]["index_key"]
    other = index_stage(emb, tmp_path / "index", small_config(tmp_path, index={"recall_sample": 100}))
    assert not other["cached"] and other["image"]["recall_queries"] == 50


def test_recall_against_exact_detects_a_bad_index():
    import faiss

    rng = np.random.default_rng(1)
    x = l2_normalise(rng.normal(size=(500, 16)))
    bad = faiss.IndexFlatIP(16)
    bad.add(l2_normalise(rng.normal(size=(500, 16))))  # unrelated vectors: approximate search is wrong
    good = faiss.IndexFlatIP(16)
    good.add(x)
    q = np.arange(0, 500, 5)
    assert recall_at_k(good, x, q, 8)["recall@8"] == 1.0
    assert recall_at_k(bad, x, q, 8)["recall@8"] < 0.2
