"""Staleness propagates, judged by `cocu_core.stages.pipeline_status` on a small real work folder (slow: real
img2dataset, clip-retrieval, autofaiss, curation, two GroupViT steps and an evaluation, run stage by stage through
the registry, without Prefect).

Each case changes one thing users change, asks the registry for every stage's state, and undoes the change:
  - new encoder weights written at the same path -> embed and everything after it stale, download done;
  - a new archive (re-curated with another setting) -> train and evaluate stale, curation's upstream done;
  - other evaluation templates or background thresholds -> evaluate stale alone, with the field named;
  - an edited caption in the url list (same URL) -> download stale, and a rerun downloads again.
"""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import small_config
from cocu_core.stages import applicable_stages, get, pipeline_status
from cocu_core.stages.base import Context
from cocu_core.toyworld import read_pairs

pytestmark = pytest.mark.slow
TINY = {"vision_width": 64, "vision_heads": 2, "text_width": 64, "text_heads": 2, "proj_hidden": 128, "embed_dim": 64}


def _cfg(tmp, world_dir, weights, **over):
    base = dict(data={"source": "url_list", "url_list": str(tmp / "list.parquet"), "shard_size": 60},
                encoder={"pretrained": str(weights), "train_toy": False},
                train={"epochs": 1, "batch_size": 8, "max_steps": 2, "augment": "none", "threads": 1,
                       "model_overrides": TINY},
                eval={"datasets": ["toy"], "roots": {"toy": str(world_dir / "val")}, "max_images": 2, "panels": 0,
                      "class_names": str(world_dir / "val" / "class_names.txt")})
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return small_config(tmp / "run", name="stale", **base)


def _states(cfg) -> dict[str, str]:
    return {s.stage: s.state for s in pipeline_status(cfg)}


def _reasons(cfg, stage: str) -> list[str]:
    return next(s.reasons for s in pipeline_status(cfg) if s.stage == stage)


def _run(cfg, *names: str) -> dict:
    ctx = Context(cfg, log=lambda m: None, progress=False)
    return {n: get(n).run(ctx) for n in (names or applicable_stages(cfg))}


@pytest.fixture(scope="module")
def work(world_dir, toy_encoder_weights, tmp_path_factory):
    """Why: one finished pipeline (url list of 120 toy pairs, the trained toy encoder given as a weights file)."""
    tmp = tmp_path_factory.mktemp("stale")
    pairs = read_pairs(world_dir / "train").to_pylist()[:120]
    pq.write_table(pa.Table.from_pylist([{"url": (world_dir / "train" / p["file"]).as_uri(), "caption": p["caption"]}
                                         for p in pairs]), tmp / "list.parquet")
    weights = tmp / "weights" / "cocu-tiny.pt"  # a copy with no training manifest beside it: keyed by file identity
    weights.parent.mkdir()
    shutil.copy(toy_encoder_weights, weights)
    cfg = _cfg(tmp, world_dir, weights)
    reps = _run(cfg)
    assert not reps["train"]["cached"] and reps["train"]["steps"] == 2
    return {"tmp": tmp, "cfg": cfg, "weights": weights, "world": world_dir}


STAGES = ["download", "encoder", "embed", "index", "vocabulary", "concepts", "curate", "train", "evaluate"]


def test_a_finished_run_is_done_everywhere(work):
    assert _states(work["cfg"]) == dict.fromkeys(STAGES, "done")


def test_new_encoder_weights_at_the_same_path_make_embed_and_everything_after_stale(work):
    import torch

    w = work["weights"]
    saved, st = w.read_bytes(), w.stat()
    sd = torch.load(w, map_location="cpu", weights_only=False)
    state = sd.get("state_dict", sd)
    name = next(k for k, v in state.items() if torch.is_floating_point(v))
    state[name] = state[name] + 0.01  # retrained weights: other bytes, same file name
    torch.save(sd, w)
    try:
        states = _states(work["cfg"])
        assert {s: states[s] for s in ("download",)} == {"download": "done"}
        assert all(states[s] == "stale" for s in STAGES[STAGES.index("embed"):]), states
        assert any("upstream 'encoder'" in r or "inputs changed" in r for r in _reasons(work["cfg"], "embed"))
    finally:
        w.write_bytes(saved)
        os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _states(work["cfg"]) == dict.fromkeys(STAGES, "done")  # the same file identity again: nothing to redo


def test_a_new_archive_makes_training_and_evaluation_stale(work):
    cfg = work["cfg"]
    other = _cfg(work["tmp"], work["world"], work["weights"], curation={"k_sample": cfg.curation.k_sample + 2})
    assert _states(other)["curate"] == "stale"  # the setting is in curation's key
    shutil.copytree(cfg.workpath / "curate", work["tmp"] / "curate.bak")
    try:
        assert not _run(other, "curate")["curate"]["cached"]  # the new archive
        states = _states(other)
        assert {s: states[s] for s in STAGES[:STAGES.index("curate") + 1]} == dict.fromkeys(STAGES[:7], "done")
        assert states["train"] == "stale" and states["evaluate"] == "stale", states
        assert _reasons(other, "train") == ["its inputs changed"]  # no training field changed: the archive did
        assert "upstream 'train' is stale" in _reasons(other, "evaluate")
    finally:
        shutil.rmtree(cfg.workpath / "curate")
        shutil.move(work["tmp"] / "curate.bak", cfg.workpath / "curate")
    assert _states(cfg) == dict.fromkeys(STAGES, "done")


@pytest.mark.parametrize("change, field", [({"templates": "full80"}, "eval.templates"),
                                           ({"bg_threshold": {"voc": 0.5}}, "eval.bg_threshold"),
                                           ({"crop": 32, "stride": 16}, "eval.crop")])
def test_new_evaluation_settings_make_only_evaluate_stale(work, change, field):
    other = _cfg(work["tmp"], work["world"], work["weights"], eval=change)
    states = _states(other)
    assert states == {**dict.fromkeys(STAGES, "done"), "evaluate": "stale"}
    assert any(r.startswith(f"{field}:") for r in _reasons(other, "evaluate")), _reasons(other, "evaluate")


def test_runtime_only_settings_change_nothing(work):
    other = _cfg(work["tmp"], work["world"], work["weights"], eval={"window_batch": 3, "device": "cpu"},
                 train={"threads": 2}, runtime={"concurrency": 1}, data={"processes": 1, "threads": 2})
    assert _states(other) == dict.fromkeys(STAGES, "done")


def test_an_edited_caption_in_the_url_list_makes_download_stale_and_downloads_again(work):
    cfg, lst = work["cfg"], work["tmp"] / "list.parquet"
    saved = lst.read_bytes()
    rows = pq.read_table(lst).to_pylist()
    rows[3]["caption"] = rows[3]["caption"] + " on a sunny day"  # same URL, new caption
    pq.write_table(pa.Table.from_pylist(rows), lst)
    backup = work["tmp"] / "download.bak"
    shutil.copytree(cfg.workpath / "download", backup)
    try:
        states = _states(cfg)
        assert states["download"] == "stale" and all(states[s] == "stale" for s in ("embed", "curate", "train")), states
        assert any(r.startswith("the url list changed (120 usable pairs now") for r in _reasons(cfg, "download"))
        rep = _run(cfg, "download")["download"]
        assert not rep["cached"] and rep["success"] == 120
        assert _states(cfg)["download"] == "done"
        caps = pq.read_table(cfg.workpath / "download" / "samples.parquet").column("caption").to_pylist()
        assert rows[3]["caption"] in caps
    finally:
        lst.write_bytes(saved)
        shutil.rmtree(cfg.workpath / "download")
        shutil.move(backup, cfg.workpath / "download")
    assert _states(cfg) == dict.fromkeys(STAGES, "done")
