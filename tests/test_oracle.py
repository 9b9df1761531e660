"""The oracle arm and the training-signal report on a real (small) toy world downloaded by the real img2dataset.

The oracle archive must hold exactly each downloaded image's ground truth (failed downloads left out),
oracle prompts must be ground-truth concepts, a workdir without a toy world is refused in one clear line,
and the training signal's fast replay must equal what the training loader's own batches carry.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from ingest_fixtures import CORRUPT_INDEX, EMPTY_CAPTION_INDEX, MISSING_INDEX, faulty_source, small_config
from cocu_core.config import ToyWorldConfig
from cocu_core.curation import ArchiveReader
from cocu_core.stages.download import download_stage
from cocu_core.evaluation.training_signal import (epoch_plan, format_training_signal, replay_draws, signal_scores,
                                                  training_signal)
from cocu_core.stages.semantic_gap import arm_inputs, training_signal_stage
from cocu_core.toyworld import generate_world, read_pairs, serve_directory, write_url_list
from cocu_core.toyworld.concepts import BY_NAME
from cocu_core.toyworld.oracle import OracleError
from cocu_core.stages.curate import oracle_archive
from cocu_core.train.data import TrainData, TrainDataError

torch.set_num_threads(1)
TINY = {"vision_width": 64, "vision_heads": 2, "text_width": 64, "text_heads": 2, "proj_hidden": 128,
        "embed_dim": 64, "drop_path_rate": 0.0}
N_TRAIN = 48


def cfg_for(work: Path, **train):
    t = {"model": "groupvit-toy", "model_overrides": TINY, "batch_size": 8, "epochs": 2, "augment": "crop_flip",
         "templates": "simple", "seed": 5, "threads": 1, "log_every": 1, "checkpoint_every": 50, **train}
    world = {"seed": 3, "n_web": 0, "n_train": N_TRAIN, "n_val": 0}
    return small_config(work, data={"shard_size": 20, "toyworld": world}, train=t)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A toy world in <work>/toyworld and its train split downloaded (one corrupt, one missing, one empty caption)."""
    root = tmp_path_factory.mktemp("oracle")
    w = root / "work"
    cfg = cfg_for(w)
    generate_world(w / "toyworld", ToyWorldConfig(seed=3, n_web=0, n_train=N_TRAIN, n_val=0), workers=2)
    src, table = faulty_source(w / "toyworld", root / "src")
    with serve_directory(src) as srv:
        write_url_list(table, srv.base_url, root / "urls.parquet")
        rep = download_stage(root / "urls.parquet", w / "download", cfg, base_url=srv.base_url, progress=False)
    assert rep["success"] == N_TRAIN - 3 and rep["n_shards"] == 3
    return w


def prompt_concept(prompt: str) -> str:
    m = re.fullmatch(r"a photo of a (.+)\.", prompt)
    assert m, prompt
    return m.group(1)


def test_oracle_archive_is_the_ground_truth_of_each_downloaded_image(work):
    cfg = cfg_for(work)
    out = oracle_archive(cfg)
    assert sorted(p.name for p in out.glob("archive_*.parquet")) == [f"archive_0000{i}.parquet" for i in range(3)]
    reader = ArchiveReader(out)
    assert reader.variant == "oracle"
    samples = pq.read_table(work / "download" / "samples.parquet").to_pylist()
    ok = {r["key"]: r["sample_id"] for r in samples if r["status"] == "success"}
    pairs = read_pairs(work / "toyworld" / "train").to_pylist()
    gt = {r["key"]: r for r in pairs}
    failed = {pairs[i]["key"] for i in (CORRUPT_INDEX, MISSING_INDEX, EMPTY_CAPTION_INDEX)}
    assert set(reader.keys()) == set(ok) and not failed & set(ok.values())
    for key, sid in ok.items():
        e = reader.get(key)
        assert sorted(e.concepts) == sorted(gt[sid]["concepts"]) and len(e.concepts) == len(set(e.concepts))
        assert e.scores.tolist() == [1.0] * len(e.concepts) and e.concept_ids.tolist() == sorted(e.concept_ids.tolist())
        assert e.caption == gt[sid]["caption"]
        assert sorted(e.caption_concept_ids.tolist()) == sorted(BY_NAME[n].id for n in gt[sid]["named"])
    # each shard's file holds that shard's samples, in key order
    for f in sorted(out.glob("archive_*.parquet")):
        keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
        shard = f.stem.split("_")[1]
        assert keys == sorted(k for k, s in ((r["key"], r["shard"]) for r in samples if r["status"] == "success")
                              if s == shard)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "oracle" and m["counts"]["images"] == N_TRAIN - 3 and m["counts"]["no_ground_truth"] == 0
    stamp = (out / "archive_00000.parquet").stat().st_mtime_ns
    assert oracle_archive(cfg) == out and (out / "archive_00000.parquet").stat().st_mtime_ns == stamp  # cached


def test_oracle_prompts_are_ground_truth_concepts_drawn_anew_each_epoch(work):
    cfg = cfg_for(work)
    out = oracle_archive(cfg)
    reader = ArchiveReader(out)
    data = TrainData(work / "download" / "shards", out, "oracle", 32, cfg.train)
    try:
        changed = 0
        for i, key in enumerate(data.keys.tolist()):
            gt = reader.get(key).concepts
            draws = [[prompt_concept(p) for p in data.texts_for(e, i)[1:] if p != data.prompt_inputs(i)[0]]
                     for e in range(4)]
            for d in draws:
                assert len(d) == min(3, len(gt)) and len(set(d)) == len(d) and set(d) <= set(gt)
            changed += len({tuple(d) for d in draws}) > 1
        assert changed > len(data.keys) // 2  # uniform draws: a new choice most epochs
        wide = TrainData(work / "download" / "shards", out, "oracle", 32, cfg.train.model_copy(update={"k_prompts": 8}))
        for i, key in enumerate(wide.keys.tolist()[:10]):
            texts = wide.texts_for(0, i)
            assert sorted(prompt_concept(p) for p in texts[1:] if p != texts[0]) == sorted(reader.get(key).concepts)
        wide.close()
    finally:
        data.close()
    with pytest.raises(TrainDataError, match="ground-truth"):
        TrainData(work / "download" / "shards", out, "topk-release", 32, cfg.train)


def test_no_toy_world_is_refused_clearly(work, tmp_path, capsys):
    from cocu_core.cli import main
    from cocu_core.stages.train import train_stage

    bare = tmp_path / "bare"
    shutil.copytree(work / "download", bare / "download")
    cfg = cfg_for(bare)
    with pytest.raises(OracleError, match="has no toy world"):
        oracle_archive(cfg)
    with pytest.raises(OracleError, match="exists only for data.source: toyworld"):
        train_stage(cfg, variant="oracle", progress=False, log=lambda m: None)
    with pytest.raises(OracleError, match="has no toy world"):
        training_signal(cfg, arm_inputs(cfg, ["baseline"]))
    (tmp_path / "c.yaml").write_text(f"workdir: {bare}\ndata:\n  source: url_list\n  url_list: /nowhere.parquet\n")
    assert main(["train", "-c", str(tmp_path / "c.yaml"), "--variant", "oracle"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the oracle needs the toy world's ground truth") and "'url_list'" in err
    assert "Traceback" not in err and not (bare / "curate").exists()


def test_train_stage_oracle_runs_and_keys_on_the_oracle_archive(work, tmp_path):
    from cocu_core.stages.train import train_inputs, train_stage

    w = tmp_path / "w"
    shutil.copytree(work / "toyworld", w / "toyworld")
    shutil.copytree(work / "download", w / "download")
    cfg = cfg_for(w, max_steps=2)
    rep = train_stage(cfg, variant="oracle", progress=False, log=lambda m: None)
    assert rep["steps"] == 2 and not rep["cached"] and (w / "train" / "oracle" / "final.pt").is_file()
    assert (w / "curate" / "oracle" / "manifest.json").is_file()
    m = json.loads((w / "train" / "oracle" / "manifest.json").read_text())
    assert m["inputs_fingerprint"] == train_inputs(cfg, "oracle")[2]
    assert train_stage(cfg, variant="oracle", progress=False, log=lambda m: None)["cached"]
    # a changed oracle archive (its manifest key) changes the training inputs: retrain
    om = json.loads((w / "curate" / "oracle" / "manifest.json").read_text())
    (w / "curate" / "oracle" / "manifest.json").write_text(json.dumps({**om, "cache_key": "other"}))
    assert train_inputs(cfg, "oracle")[2] != m["inputs_fingerprint"]


def test_signal_scores_by_hand():
    # The training-signal report's two denominators (our definitions; the paper has no such report): coverage is per
    # image, the share of its ground-truth classes that its caption or any drawn prompt reaches over all epochs,
    # averaged over the images that have ground truth; the wrong-prompt fraction is per prompt, the drawn prompts whose
    # class is not in their image, over all prompts drawn. Prompts count through the lemma table, case-insensitive.
    gt = [["sky", "grass", "ball"], ["water", "boat"], []]
    named = [["ball"], [], []]
    drawn = [["lawn", "picture", "ball", "Grass"], ["ships", "car"], ["sky"]]
    r = signal_scores(gt, named, drawn, epochs=2)
    # image 1: caption ball + drawn grass -> 2/3; image 2: boat -> 1/2; image 3 has no ground truth (not averaged)
    assert r["gt_coverage"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r["caption_coverage"] == pytest.approx((1 / 3 + 0) / 2)
    assert r["missing_coverage"] == pytest.approx(2 / 4)  # grass of {sky, grass}, boat of {water, boat}
    assert r["wrong_prompt_fraction"] == pytest.approx(3 / 7)  # picture, car, sky (not in image 3)
    assert (r["prompts"], r["images"], r["epochs"]) == (7, 2, 2)
    with pytest.raises(ValueError, match="length mismatch"):
        signal_scores(gt, named, drawn[:2])
    assert epoch_plan(3, 4, None) == [(0, 4), (1, 4), (2, 4)]
    assert epoch_plan(3, 4, 6) == [(0, 4), (1, 2)]
    table = format_training_signal({"oracle": r})
    assert "| oracle | 58.3% | 50.0% | 42.9% | 7 | 2 | 2 |" in table


def loader_draws(data: TrainData, plan) -> dict[str, list[str]]:
    """What the training loader's own batches carry (images decoded), as concepts per key."""
    out: dict[str, list[str]] = {}
    for epoch, steps in plan:
        for s, batch in enumerate(data.batches(epoch)):
            if s >= steps:
                break
            for key, texts in zip(batch.keys, batch.texts):
                out.setdefault(key, []).extend(prompt_concept(p) for p in texts[1:] if p != texts[0])
    return out


def test_training_signal_replays_exactly_what_the_loader_gives(work, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(work / "toyworld", w / "toyworld")
    shutil.copytree(work / "download", w / "download")
    cfg = cfg_for(w, epochs=3, max_steps=13)  # 45 samples, 5 steps per epoch: epochs of 5, 5 and 3 steps
    rows = training_signal(cfg, arm_inputs(cfg, ["baseline", "oracle"]))
    pairs = {r["key"]: r for r in read_pairs(w / "toyworld" / "train").to_pylist()}
    sid = {r["key"]: r["sample_id"] for r in pq.read_table(w / "download" / "samples.parquet").to_pylist()}
    for arm in ("baseline", "oracle"):
        archive = w / "curate" / "oracle" if arm == "oracle" else None
        data = TrainData(w / "download" / "shards", archive, arm, 32, cfg.train)
        plan = epoch_plan(cfg.train.epochs, data.steps_per_epoch, cfg.train.max_steps)
        assert plan == [(0, 5), (1, 5), (2, 3)]
        seen = loader_draws(data, plan)
        # the replay's own draws are the loader's, concept for concept and epoch after epoch (decoded batches)
        replayed = replay_draws(data, plan)
        data.close()
        keys = [k for k in data.keys.tolist() if k in seen]
        assert {k: d for k, d in zip(data.keys.tolist(), replayed) if d is not None} == seen, arm
        # scored by signal_scores, itself checked by hand in test_signal_scores_by_hand
        expect = signal_scores([pairs[sid[k]]["concepts"] for k in keys], [pairs[sid[k]]["named"] for k in keys],
                               [seen[k] for k in keys], epochs=3)
        assert rows[arm] == pytest.approx(expect, nan_ok=True), arm
        assert rows[arm]["images"] == len(keys) and rows[arm]["prompts"] == sum(len(v) for v in seen.values())
        if arm == "oracle":  # oracle prompts are class names: its coverage by plain sets, without signal_scores
            gts = [set(pairs[sid[k]]["concepts"]) for k in keys]
            cover = [len((set(pairs[sid[k]]["named"]) | set(seen[k])) & g) / len(g) for k, g in zip(keys, gts) if g]
            assert rows[arm]["gt_coverage"] == pytest.approx(sum(cover) / len(cover))
    assert rows["oracle"]["wrong_prompt_fraction"] == 0.0
    assert rows["oracle"]["gt_coverage"] > rows["baseline"]["gt_coverage"]
    assert rows["baseline"]["missing_coverage"] < rows["oracle"]["missing_coverage"]


def test_training_signal_stage_caches_on_arms_and_training_fields(work, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(work / "toyworld", w / "toyworld")
    shutil.copytree(work / "download", w / "download")
    cfg = cfg_for(w)
    rows, cached = training_signal_stage(cfg)
    assert not cached and list(rows) == ["baseline", "oracle"]  # no curated archives here: the arms that exist
    out = w / "reports" / "semantic_gap" / "training_signal"
    assert json.loads((out / "training_signal.json").read_text())["arms"]["oracle"]["epochs"] == 2
    assert (out / "training_signal.md").read_text().startswith("| arm |")
    again, cached = training_signal_stage(cfg)
    assert cached and again == json.loads(json.dumps(rows))
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 3})})
    rows3, cached = training_signal_stage(longer)
    assert not cached and rows3["oracle"]["epochs"] == 3


def _curve_values(folder: Path) -> list[dict]:
    import csv

    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")}
            for r in csv.DictReader((folder / "loss_curve.csv").open())]


def _as_killed(folder: Path) -> None:
    """A finished run turned into one killed after its last checkpoint: checkpoints stay, and the state file a run
    writes when it starts (its cache key; a finished run removes it) is put back; no result."""
    key = json.loads((folder / "manifest.json").read_text())["cache_key"]
    for f in ("final.pt", "manifest.json", "train_report.json"):
        (folder / f).unlink(missing_ok=True)
    (folder / "state.json").write_text(json.dumps({"cache_key": key}))
    assert list((folder / "checkpoints").glob("step_*.pt"))


def test_no_resume_across_settings_a_changed_lr_trains_afresh(work, tmp_path):
    from cocu_core.stages.train import train_stage

    w = tmp_path / "w"
    shutil.copytree(work / "download", w / "download")
    cfg = cfg_for(w, max_steps=4, checkpoint_every=2, epochs=1)
    out = w / "train" / "baseline"

    def train(c, logs: list[str]) -> dict:
        return train_stage(c, variant="baseline", progress=False, log=logs.append)

    train(cfg, [])
    first = _curve_values(out)
    _as_killed(out)
    same: list[str] = []
    train(cfg, same)  # the same settings: it resumes (the control: the check below can fail)
    assert any(m.startswith("train: resumed from step_00000004.pt") for m in same), same
    _as_killed(out)
    lr = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": cfg.train.lr * 3})})
    logs: list[str] = []
    rep = train(lr, logs)
    assert not any("resumed from" in m for m in logs), logs  # other settings: the old checkpoints are not used
    assert rep["steps"] == 4
    fresh = tmp_path / "fresh"
    shutil.copytree(work / "download", fresh / "download")
    lr_fresh = lr.model_copy(update={"workdir": str(fresh)})
    train(lr_fresh, [])
    got, want = _curve_values(out), _curve_values(fresh / "train" / "baseline")  # the curve of a fresh run
    assert [(r["step"], r["epoch"], r["lr"]) for r in got] == [(r["step"], r["epoch"], r["lr"]) for r in want]
    for a, b in zip(got, want):
        assert all(abs(float(a[k]) - float(b[k])) < 1e-5 for k in ("loss", "loss_image_text", "loss_multi_label"))
    assert [r["lr"] for r in got] != [r["lr"] for r in first]  # and not the old settings' curve
