"""End to end: download -> encoder -> embed -> index on a few hundred toy pairs with injected faults; the flow."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ingest_fixtures import faulty_source, small_config, world_dir  # noqa: F401
from cocu_core.data.download import download_stage
from cocu_core.embed import embed_stage, load_embeddings
from cocu_core.encoder.load import encoder_fingerprint, load_encoder, model_config_paths
from cocu_core.encoder.train import train_toy_encoder
from cocu_core.index import build_index_stage, load_index
from cocu_core.toyworld import serve_directory, write_url_list

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_stages(cfg, src, table, world):
    w = cfg.workpath
    with serve_directory(src) as srv:
        write_url_list(table, srv.base_url, w / "urls.parquet")
        dl = download_stage(w / "urls.parquet", w / "download", cfg, base_url=srv.base_url, progress=False)
    enc = train_toy_encoder(cfg, world / "web", w / "encoder", progress=False)
    loaded = load_encoder(cfg)
    emb = embed_stage(w / "download", w / "embed", cfg, loaded.clip_model, encoder_fingerprint(cfg),
                      model_config_paths(cfg), progress=False)
    idx = build_index_stage(w / "embed", w / "index", cfg)
    return dl, enc, emb, idx, loaded


def test_download_encoder_embed_index_end_to_end(world_dir, tmp_path):
    src, table = faulty_source(world_dir, tmp_path / "src")
    cfg = small_config(tmp_path / "run")
    dl, enc, emb, idx, loaded = run_stages(cfg, src, table, world_dir)
    n_ok = table.num_rows - 3
    assert dl["success"] == n_ok and emb["embedded"] == n_ok and emb["skipped_unreadable"] == 0
    assert idx["image"]["vectors"] == idx["caption"]["vectors"] == n_ok

    img, txt, meta = load_embeddings(cfg.workpath / "embed")
    assert img.shape == txt.shape == (n_ok, 64) and img.dtype == np.float32 and meta.num_rows == n_ok
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-4)
    keys = meta.column("key").to_pylist()
    assert keys == sorted(keys) and len(set(keys)) == n_ok and meta.column("row").to_pylist() == list(range(n_ok))

    # Alignment: row i's embeddings are the encoder's embeddings of the image and caption stored under key i.
    from PIL import Image

    by_key = {}
    for tar in sorted((cfg.workpath / "download" / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                k, ext = m.name.split(".", 1)
                by_key.setdefault(k, {})[ext] = tf.extractfile(m).read()
    rows = np.random.default_rng(0).choice(n_ok, 20, replace=False)
    imgs = [Image.open(io.BytesIO(by_key[keys[r]]["jpg"])) for r in rows]
    caps = [by_key[keys[r]]["txt"].decode() for r in rows]
    assert caps == [meta.column("caption")[int(r)].as_py() for r in rows]
    assert [json.loads(by_key[keys[r]]["json"])["sample_id"] for r in rows] == [meta.column("sample_id")[int(r)].as_py() for r in rows]
    assert np.min(np.sum(loaded.encode_images(imgs) * img[rows], axis=1)) > 0.99
    assert np.min(np.sum(loaded.encode_text(caps) * txt[rows], axis=1)) > 0.99

    index = load_index(cfg.workpath / "index", "image")
    _, ids = index.search(img[rows], 8)
    assert ids[:, 0].tolist() == rows.tolist()
    assert idx["image"]["recall@8"] >= 0.95 and idx["image"]["self_first"] == 1.0
    for stage in ("download", "encoder", "embed", "index"):
        m = json.loads((cfg.workpath / stage / "manifest.json").read_text())
        assert m["stage"] == stage and m["counts"] and m["versions"]["cocu"]

    stamps = {p: p.stat().st_mtime_ns for p in cfg.workpath.rglob("*") if p.is_file() and p.name != "urls.parquet"}
    dl2, enc2, emb2, idx2, _ = run_stages(cfg, src, table, world_dir)
    assert dl2["cached"] and enc2["cached"] and emb2["cached"] and idx2["cached"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # a cache hit writes nothing


def test_encoder_report_far_above_chance_with_toy_config(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from cocu_core.cli import main; sys.exit(main())", "encoder-report",
         "-c", str(ROOT / "configs" / "toy.yaml"), "--set", f"workdir={tmp_path}", "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout)
    rep = json.loads((tmp_path / "encoder" / "report.json").read_text())
    assert f"R@5: {100 * rep['r@5']:5.1f}%" in out.stdout
    assert rep["n_pairs"] == 500 and rep["r@5"] >= 5 * rep["chance_r@5"] and rep["r@1"] >= 5 * rep["chance_r@1"]


FLOW_SCRIPT = r'''
import json, sys
from flows.pipeline import cocu_pipeline
first = cocu_pipeline(config_path=sys.argv[1])
second = cocu_pipeline(config_path=sys.argv[1])
third = cocu_pipeline(config_path=sys.argv[1], overrides=["curation.variant=v2"])
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    keys = sorted({a.key for a in c.read_artifacts() if a.key})
print(json.dumps({"first": {k: bool(v.get("cached")) for k, v in first.items() if isinstance(v, dict)},
                  "second": {k: bool(v.get("cached")) for k, v in second.items() if isinstance(v, dict)},
                  "third": {k: bool(v.get("cached")) for k, v in third.items() if isinstance(v, dict)},
                  "curate": second["curate"], "summary": second["summary"], "artifacts": keys}))
'''


def test_cocu_pipeline_flow_runs_and_reruns_from_cache(tmp_path):
    import yaml

    cfg = small_config(tmp_path / "run", name="e2e").model_dump(mode="json")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-c", FLOW_SCRIPT, str(cfg_path)], capture_output=True, text=True, timeout=900,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    stages = ["toyworld", "download", "encoder", "embed", "index", "vocabulary", "concepts", "curate", "semantic_gap",
              "train", "evaluate"]
    assert {k: res["first"][k] for k in stages} == dict.fromkeys(stages, False)
    assert {k: res["second"][k] for k in stages} == dict.fromkeys(stages, True)
    # switching the variant re-curates into its own folder and trains/evaluates that variant; everything upstream
    # (and the report) is reused
    assert {k: res["third"][k] for k in stages} == {**dict.fromkeys(stages, True), "curate": False, "train": False,
                                                    "evaluate": False}
    for stage in ("toyworld-gap", "download", "encoder", "embed", "index", "vocabulary", "curate", "semantic-gap",
                  "curation-report"):
        assert f"e2e-{stage}" in res["artifacts"]
    # one archive per download shard, every downloaded sample exactly once, readable by the loader's API
    from cocu_core.curation import ArchiveReader, ConceptSampler
    from cocu_core.embed import load_embeddings

    _, _, meta = load_embeddings(tmp_path / "run" / "embed")
    n_shards = len(set(meta.column("shard").to_pylist()))
    assert res["curate"]["shards"] == n_shards and res["curate"]["images"] == meta.num_rows
    for variant in ("cocu", "v2"):
        archive_dir = tmp_path / "run" / "curate" / variant
        assert len(list(archive_dir.glob("archive_*.parquet"))) == n_shards
        reader = ArchiveReader(archive_dir)
        entries = [reader.get(k) for k in meta.column("key").to_pylist()]
        assert sum(len(e.concepts) > 0 for e in entries) >= 0.9 * len(entries)
        sampler = ConceptSampler(variant=variant, k=3, seed=0)
        assert all(len(sampler.sample(e)) == 3 for e in entries[:50])
    # the archives the flow wrote equal the literal per-image reference on the toy world's real embeddings
    _archives_match_reference(cfg_path, tmp_path / "run")


def _archives_match_reference(cfg_path: Path, run: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cocu_core.config import load_config
    from cocu_core.curation import reference_curate
    from cocu_core.curation_stage import concept_embeddings_stage, load_curation_data

    cfg = load_config(cfg_path)

    def not_cached(texts):
        raise AssertionError("the flow should have cached the concept embeddings")

    emb, hit = concept_embeddings_stage(run / "vocabulary", run / "concept_emb", cfg, encoder_fingerprint(cfg),
                                        not_cached)
    d = load_curation_data(run / "embed", run / "vocabulary", emb, cfg.curation.max_ngram)
    ref = reference_curate(d.keys, d.captions, (d.offsets, d.ids), d.img_emb, d.cap_emb, d.concept_emb,
                           cfg.curation, load_index(run / "index", "image"), concept_names=d.concepts).to_pylist()
    prod = pa.concat_tables([pq.read_table(f) for f in sorted((run / "curate" / "cocu").glob("archive_*.parquet"))])
    by_key = {r["key"]: r for r in prod.to_pylist()}
    assert len(by_key) == len(ref) == len(d.keys)
    same_nb = 0
    for b in ref:
        a = by_key[b["key"]]
        assert a["caption_concept_ids"] == b["caption_concept_ids"]
        if a["neighbour_keys"] != b["neighbour_keys"]:  # batched vs one-query search may swap near-ties
            continue
        same_nb += 1
        assert a["concept_ids"] == b["concept_ids"] and a["cluster_ids"] == b["cluster_ids"], b["key"]
        np.testing.assert_allclose(a["naive_scores"], b["naive_scores"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(a["t2v_scores"], b["t2v_scores"], atol=1e-5, rtol=0)
    assert same_nb >= 0.95 * len(ref)
