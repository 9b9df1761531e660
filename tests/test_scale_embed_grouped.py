"""clip-retrieval's distributed inference path: one call over several shards, one output partition per shard (what
its pyspark and slurm distributors spread), split back into per-shard parts equal to the shard-by-shard parts."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import small_config
from cocu_core.stages.download import download_stage
from cocu_core.data.shards import shard_name
from cocu_core.stages.embed import embed_stage, part_key_for
from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, model_config_paths, resolve_weights
from cocu_core.proc import run_module
from cocu_core.toyworld import read_pairs, serve_directory, write_url_list

pytestmark = pytest.mark.slow


def test_grouped_inference_splits_into_the_same_parts(world_dir, tmp_path):
    import torch

    from cocu_core.compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    torch.set_num_threads(1)
    cfg = small_config(tmp_path / "run", data={"shard_size": 50})
    w = cfg.workpath
    model_configs = model_config_paths(cfg)  # registers cocu-tiny; random weights stand in for a trained encoder
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model("cocu-tiny").state_dict(), weights)
    cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"pretrained": str(weights)})})
    table = read_pairs(world_dir / "train").slice(0, 100)
    with serve_directory(world_dir / "train") as srv:
        write_url_list(table, srv.base_url, w / "urls.parquet")
        dl = download_stage(w / "urls.parquet", w / "download", cfg, base_url=srv.base_url, progress=False)
    assert dl["n_shards"] == 2
    arch, ckpt = resolve_weights(cfg)
    clip_model, enc_id = clip_model_string(arch, ckpt), encoder_fingerprint(cfg)
    embed_stage(w / "download", w / "embed", cfg, clip_model, enc_id, model_configs, progress=False)

    grouped = tmp_path / "grouped"
    grouped.mkdir()
    names = [shard_name(i) for i in range(2)]
    spec = {"parts_dir": str(grouped), "shards_dir": str(w / "download" / "shards"), "shards": names,
            "clip_model": clip_model, "part_key": part_key_for(w / "download", enc_id, cfg), "batch_size": 16,
            "num_workers": 0, "model_configs": [str(p) for p in model_configs], "grouped": True}
    run_module("cocu_core.embeddings._runner", spec, tmp_path / "spec.json", tmp_path / "grouped.log")
    assert sorted(p.name for p in grouped.iterdir()) == names  # no staging folder left
    for name in names:
        a, b = w / "embed" / "parts" / name, grouped / name
        ma, mb = (pq.read_table(p / "metadata" / "metadata_0.parquet") for p in (a, b))
        assert ma.num_rows > 0 and ma.column("image_path").to_pylist() == mb.column("image_path").to_pylist()
        for sub in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy"):
            np.testing.assert_allclose(np.load(a / sub).astype(np.float32), np.load(b / sub).astype(np.float32),
                                       atol=2e-3)
        assert (b / "done.json").is_file()
