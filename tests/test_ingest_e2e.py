"""End to end: download -> encoder -> embed -> index on a few hundred toy pairs with injected faults; the toy
encoder's retrieval report. (The Prefect flow end to end, reruns and variant switches: tests/test_flows_e2e.py.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ingest_fixtures import faulty_source, small_config
from cocu_core.stages.download import download_stage
from cocu_core.stages.embed import embed_stage
from cocu_core.embeddings.store import load_embeddings
from cocu_core.encoder.load import encoder_fingerprint, load_encoder, model_config_paths
from cocu_core.encoder.train import train_toy_encoder
from cocu_core.stages.index import index_stage
from cocu_core.index import load_index
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
    idx = index_stage(w / "embed", w / "index", cfg)
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


def test_encoder_report_far_above_chance(world_dir, toy_encoder_weights, tmp_path):
    """`cocu encoder-report` on the session's toy encoder (trained once by the conftest fixture on the small world's
    web split, with the toy encoder's own training code; the full toy config's 3-minute training proved nothing more
    here): held-out retrieval R@1 at least 4x and R@5 at least 3x chance, printed as the report says."""
    import yaml

    cfg = small_config(tmp_path / "run", encoder={"pretrained": str(toy_encoder_weights), "train_toy": False})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from cocu_core.cli import main; sys.exit(main())", "encoder-report",
         "-c", str(tmp_path / "c.yaml"), "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout)
    import re

    assert "held-out pairs: 50 (50 distinct captions)" in out.stdout
    got = {k: (float(a), float(b)) for k, a, b in
           re.findall(r"image->text (R@\d):\s+([\d.]+)%\s+\(chance ([\d.]+)%\)", out.stdout)}
    assert got["R@1"][1] == 2.0 and got["R@5"][1] == 10.0  # 1 and 5 of 50 distinct captions
    assert got["R@1"][0] >= 4 * got["R@1"][1] and got["R@5"][0] >= 3 * got["R@5"][1], got