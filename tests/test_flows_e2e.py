"""End to end through the real `cocu run` on a tiny toy config (slow: real Prefect, img2dataset, clip-retrieval,
autofaiss, GroupViT training and evaluation).

One work folder and one PREFECT_HOME are shared by the tests of this module, in order (each builds on the
previous ones' outputs, so run the module, not one of its tests alone):
  1. `kill -9` of the `cocu run` process group during embedding: no process of the run remains;
     Ctrl-C (SIGINT to the group, as a terminal sends it) during embedding: exit 130 with one line naming
     the stage and saying a rerun resumes, no Prefect connection errors, no process left;
  2. a full run (resuming), then a rerun that is all cache hits; every stage's outputs and artifacts;
     `cocu status` says done, and stale with the field that changed;
  3. `--set curation.variant=v2`: only that variant is curated, trained and evaluated (everything upstream
     cached); both variants' archives one per download shard and readable by the loader's API; the flow's
     archives equal the literal per-image reference;
  4. `kill -9` during `--only curate`, then a rerun one shard at a time: finished shards skipped, the archives
     equal those curated three at a time;
  5. `kill -9` during training, then a rerun: it resumes from the newest checkpoint keeping the curve up to it
     (equal losses to an uninterrupted run are the loop test's: test_train_loop.py);
  6. `cocu_ablation` (2 arms x 2 seeds) on the same work folder: its upstream is the pipeline's own cached
     stages; outputs, artifacts, every run reused on a rerun, a lost evaluation redone alone, and the
     missing-archive error.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from ingest_fixtures import small_config, status_states
from proc_fixtures import kill_marked, marked_processes, processes_mentioning, wait_all_gone, wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

STAGES = ["toyworld", "download", "encoder", "embed", "index", "vocabulary", "concepts", "curate", "semantic_gap",
          "train", "evaluate"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Why: one tiny config (3 download shards of 80, a few training steps) and one Prefect home for the module."""
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = small_config(tmp / "run", name="tiny", data={"shard_size": 80},
                       train={"epochs": 1, "batch_size": 16, "max_steps": 4, "augment": "none", "checkpoint_every": 2},
                       eval={"max_images": 4, "panels": 1}, runtime={"concurrency": 3})
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return {"tmp": tmp, "cfg": cfg, "path": path, "env": {**os.environ, "PREFECT_HOME": str(tmp / "prefect")}}


def _start(world, *args: str, mark: str) -> tuple[subprocess.Popen, Path]:
    log = world["tmp"] / f"run-{mark[:8]}.log"
    env = {**world["env"], "COCU_TEST_MARK": mark}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "-c", str(world["path"]), *args], cwd=ROOT,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _cocu(world, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=world["env"], capture_output=True,
                          text=True, timeout=1800)


def _embedding_under_way(mark: str):
    """Why: the embedding runner and its forked decode workers (same command line) are up: inference is under way."""
    return sum("cocu_core.embeddings._runner" in c for c in marked_processes(mark).values()) >= 2


def test_kill_and_ctrl_c_during_embed_leave_nothing(world):
    mark = uuid.uuid4().hex
    proc, log = _start(world, mark=mark)
    try:
        up = wait_until(lambda: proc.poll() is not None or _embedding_under_way(mark), timeout=900, every=0.2)
        assert up and proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the group: the CLI dies, no cleanup of ours runs
        proc.wait()
        assert wait_all_gone(mark) == {}  # flow process, Prefect server, embed runner, clip-retrieval workers, tracker
        assert processes_mentioning(str(world["tmp"])) == {}
    finally:
        kill_marked(mark)

    mark = uuid.uuid4().hex
    proc, log = _start(world, mark=mark)
    try:
        up = wait_until(lambda: proc.poll() is not None or _embedding_under_way(mark), timeout=900, every=0.2)
        assert up and proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group gets SIGINT
        proc.wait(timeout=120)  # a bound for "it stops", not a speed measurement
        out = log.read_text()
        assert proc.returncode == 130, out[-3000:]
        lines = [ln for ln in out.splitlines() if ln.startswith("cocu run: interrupted")]
        assert lines == [f"cocu run: interrupted during stage 'embed'; finished stages and shards are kept, "
                         f"rerun `cocu run -c {world['path']}` to resume"], out[-3000:]
        assert "ConnectError" not in out and "Error logging to API" not in out and "Traceback" not in out, out[-3000:]
        assert wait_all_gone(mark) == {}
        assert processes_mentioning(str(world["tmp"])) == {}
    finally:
        kill_marked(mark)


def _summary_stages(out: str) -> dict[str, bool]:
    line = next(ln for ln in out.splitlines() if ln.startswith("cocu_pipeline 'tiny' finished"))
    parts = line.split("stages: ", 1)[1].split(", ")
    return {p.split()[0]: p.endswith("(cached)") for p in parts}


def _archive_hashes(world) -> dict[str, str]:
    d = world["cfg"].workpath / "curate" / "cocu"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("archive_*.parquet"))}


ARTIFACTS = r'''
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    arts = c.read_artifacts()
print(json.dumps({a.key: {"type": a.type, "data": a.data if isinstance(a.data, str) else json.dumps(a.data)}
                  for a in sorted(arts, key=lambda a: a.created) if a.key}))
'''


def test_full_run_then_all_cache_hits_artifacts_and_status(world):
    mark = uuid.uuid4().hex
    t0 = time.time()
    proc, log = _start(world, mark=mark)
    rc = proc.wait(timeout=1800)
    first_s = time.time() - t0
    out = log.read_text()
    assert rc == 0, out[-4000:]
    # the killed runs finished toyworld, download and encoder (reused); the rest is computed now
    assert _summary_stages(out) == {**dict.fromkeys(STAGES[:3], True), **dict.fromkeys(STAGES[3:], False)}, \
        out[-2000:]
    t0 = time.time()
    proc, log = _start(world, mark=mark)
    rc = proc.wait(timeout=1800)
    second_s = time.time() - t0
    out = log.read_text()
    assert rc == 0, out[-4000:]
    assert _summary_stages(out) == dict.fromkeys(STAGES, True), out[-2000:]
    print(f"\ncocu run on the tiny toy config: first (resumed after the kills) {first_s:.1f}s, "
          f"all-cache-hit rerun {second_s:.1f}s ({second_s / first_s:.2f} of the first)")
    assert wait_all_gone(mark) == {}

    w = world["cfg"].workpath
    for stage in ("download", "encoder", "embed", "index", "vocabulary", "reports/semantic_gap", "train/cocu",
                  "evaluate/cocu", "curate/cocu/shard_00000"):
        assert (w / stage / "manifest.json").is_file(), stage
    assert len(_archive_hashes(world)) == 3 and (w / "train" / "cocu" / "final.pt").is_file()
    assert (w / "train" / "cocu" / "loss_curve.png").is_file() and (w / "evaluate" / "cocu" / "report.md").is_file()

    r = subprocess.run([sys.executable, "-c", ARTIFACTS], cwd=ROOT, env=world["env"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    arts = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("toyworld-gap", "download", "download-progress", "encoder", "embed", "embed-progress", "index",
                "index-report", "vocabulary", "concepts", "curate", "semantic-gap", "curation-report", "train",
                "train-progress", "train-loss-curve", "evaluate", "evaluation-report", "summary"):
        assert f"tiny-{key}" in arts, key
    assert arts["tiny-download-progress"]["type"] == "progress"
    assert "data:image/png;base64," in arts["tiny-train-loss-curve"]["data"]
    assert "data:image/png;base64," in arts["tiny-evaluation-report"]["data"]
    assert "| curate |" in arts["tiny-summary"]["data"] and w.as_uri() in arts["tiny-summary"]["data"]
    assert "\"cached\": true" in arts["tiny-curate"]["data"]  # the latest table is the cache-hit rerun's
    # its totals: one archive per download shard, every downloaded sample exactly once
    from cocu_core.embeddings.store import load_embeddings

    meta = load_embeddings(w / "embed")[2]
    total = next(r for r in json.loads(arts["tiny-curate"]["data"]) if r["shard"] == "all")
    assert total["shards"] == len(set(meta.column("shard").to_pylist())) == 3
    assert total["images"] == meta.num_rows

    st = _cocu(world, "status", "-c", str(world["path"]))
    assert st.returncode == 0, st.stderr
    states = status_states(st.stdout)
    assert states == dict.fromkeys(STAGES, "done"), st.stdout
    st = _cocu(world, "status", "-c", str(world["path"]), "--set", "curation.n_neighbours=4", "--set", "train.lr=0.001")
    states = status_states(st.stdout)
    assert states["embed"] == "done" and states["curate"] == "stale" and states["train"] == "stale", st.stdout
    assert "curation.n_neighbours: 8 -> 4" in st.stdout and "train.lr: 0.0016 -> 0.001" in st.stdout
    assert "upstream 'train' is stale" in st.stdout  # evaluate follows its checkpoint


VARIANT_FLOW = r"""
import json, sys
from flows.pipeline import cocu_pipeline
res = cocu_pipeline(config_path=sys.argv[1], overrides=["curation.variant=v2"])
print(json.dumps({"cached": {k: bool(v.get("cached")) for k, v in res.items() if isinstance(v, dict)},
                  "curate": res["curate"]}))
"""


def test_variant_switch_curates_trains_and_evaluates_only_that_variant(world):
    """Why: after the full run, switching the variant re-curates into its own folder and trains and evaluates that
    variant; everything upstream (and the gap report) is reused. Both variants' archives are one per download
    shard, every downloaded sample once, readable by the loader's API; the flow's archives equal the literal
    per-image reference on the toy world's real embeddings."""
    from cocu_core.curation import ArchiveReader, ConceptSampler
    from cocu_core.embeddings.store import load_embeddings

    r = subprocess.run([sys.executable, "-c", VARIANT_FLOW, str(world["path"])], cwd=ROOT, env=world["env"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert {k: res["cached"][k] for k in STAGES} == {**dict.fromkeys(STAGES, True), "curate": False, "train": False,
                                                     "evaluate": False}
    w = world["cfg"].workpath
    assert (w / "train" / "v2" / "final.pt").is_file() and (w / "evaluate" / "v2" / "manifest.json").is_file()
    _, _, meta = load_embeddings(w / "embed")
    n_shards = len(set(meta.column("shard").to_pylist()))
    assert res["curate"]["shards"] == n_shards and res["curate"]["images"] == meta.num_rows
    for variant in ("cocu", "v2"):
        archive_dir = w / "curate" / variant
        assert len(list(archive_dir.glob("archive_*.parquet"))) == n_shards
        reader = ArchiveReader(archive_dir)
        entries = [reader.get(k) for k in meta.column("key").to_pylist()]
        assert sum(len(e.concepts) > 0 for e in entries) >= 0.9 * len(entries)
        sampler = ConceptSampler(variant=variant, k=3, seed=0)
        padded = 0
        for e in entries[:50]:
            idx, drawn = sampler.sample_indices(e, np.random.default_rng(1)), sampler.sample(e, np.random.default_rng(1))
            if variant == "cocu":  # one concept per cluster, as many clusters as there are (at most 3)
                assert len(idx) == min(3, len(set(e.cluster_ids.tolist())))
                assert len({int(e.cluster_ids[i]) for i in idx}) == len(idx)
            else:  # v2 samples naively (top-k): the 3 best scores, ties by concept id, recomputed here by sorted()
                best = sorted(range(len(e.concepts)), key=lambda i: (-float(e.scores[i]), int(e.concept_ids[i])))[:3]
                assert idx == best
            assert drawn == [e.concepts[i] for i in idx] + [e.caption] * (3 - len(idx))  # the caption pads
            padded += len(idx) < 3
        assert padded < 50  # some entries have 3 concepts of their own (the checks above are not all padding)
    _archives_match_reference(world["path"], w)


def _archives_match_reference(cfg_path: Path, run: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cocu_core.config import load_config
    from cocu_core.curation import reference_curate
    from cocu_core.stages.concepts import concepts_stage
    from cocu_core.curation.data import load_curation_data
    from cocu_core.encoder.load import encoder_fingerprint
    from cocu_core.index import load_index

    cfg = load_config(cfg_path)

    def not_cached(texts):
        raise AssertionError("the flow should have cached the concept embeddings")

    emb, hit = concepts_stage(run / "vocabulary", run / "concept_emb", cfg, encoder_fingerprint(cfg),
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


def test_sigkill_during_curation_resumes_one_shard_at_a_time_to_the_same_archives(world):
    """Why: `kill -9` during curation, then a rerun: finished shards are skipped (their manifests untouched), the
    rest curated one at a time (concurrency 1), and the archives equal the uninterrupted concurrent run's."""
    import shutil

    before = _archive_hashes(world)
    assert len(before) == 3
    curate = world["cfg"].workpath / "curate" / "cocu"
    shutil.rmtree(curate)
    args = ("--only", "curate", "--set", "runtime.concurrency=1")
    mark = uuid.uuid4().hex
    proc, log = _start(world, *args, mark=mark)
    try:
        up = wait_until(lambda: proc.poll() is not None or any(curate.glob("shard_*/manifest.json")), timeout=900,
                        every=0.05)
        assert up and proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_all_gone(mark) == {}
    finally:
        kill_marked(mark)
    done = {p: p.stat().st_mtime_ns for p in curate.glob("shard_*/manifest.json")}
    assert 1 <= len(done) < 3, sorted(done)
    mark = uuid.uuid4().hex
    proc, log = _start(world, *args, mark=mark)
    rc = proc.wait(timeout=1800)
    out = log.read_text()
    assert rc == 0, out[-4000:]
    assert _summary_stages(out) == {"curate": False}
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished shards were skipped, not redone
    assert _archive_hashes(world) == before
    assert wait_all_gone(mark) == {}


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_curation_on_the_dask_and_ray_task_runners_writes_the_thread_runners_archives(world, engine):
    """Why: `cocu run --only curate --set runtime.task_runner=dask|ray` (a local cluster of each engine, started by
    prefect-dask / prefect-ray) runs the real flow's shard tasks there; its archives are the thread runner's, byte for
    byte."""
    import shutil

    before = _archive_hashes(world)
    assert len(before) == 3
    shutil.rmtree(world["cfg"].workpath / "curate" / "cocu")
    mark = uuid.uuid4().hex
    proc, log = _start(world, "--only", "curate", "--set", f"runtime.task_runner={engine}", mark=mark)
    rc = proc.wait(timeout=1800)
    out = log.read_text()
    assert rc == 0, out[-4000:]
    assert _summary_stages(out) == {"curate": False}
    assert _archive_hashes(world) == before
    assert wait_all_gone(mark) == {}  # the local cluster's processes went with the run


def _curve(world) -> list[dict]:
    """Why: the curve's values (step, epoch, losses, learning rate); its timing columns differ run to run."""
    import csv

    rows = csv.DictReader((world["cfg"].workpath / "train" / "cocu" / "loss_curve.csv").open())
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def test_sigkill_during_training_resumes_with_the_same_curve(world):
    """Why: `kill -9` of `cocu run --only train` leaves no process and a rerun resumes from the newest checkpoint,
    keeping the curve it had. That resumed losses equal an uninterrupted run's, step for step, is proven by
    test_train_loop.py::test_resume_after_sigkill_repeats_the_same_losses (the loop itself); here the CLI path."""
    import re
    import shutil

    train = ["--only", "train", "--set", "train.max_steps=10", "--set", "train.checkpoint_every=2",
             "--set", "train.log_every=1"]
    train_dir = world["cfg"].workpath / "train" / "cocu"
    shutil.rmtree(train_dir)
    mark = uuid.uuid4().hex
    proc, log = _start(world, *train, mark=mark)
    try:
        ck = train_dir / "checkpoints"
        up = wait_until(lambda: proc.poll() is not None or len(list(ck.glob("step_*.pt"))) >= 2, timeout=900, every=0.2)
        assert up and proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_all_gone(mark) == {}
    finally:
        kill_marked(mark)
    assert not (train_dir / "final.pt").exists()
    killed = _curve(world)  # written atomically: the rows up to the kill
    newest = max(int(p.stem.split("_")[1]) for p in (train_dir / "checkpoints").glob("step_*.pt"))
    mark = uuid.uuid4().hex
    proc, log = _start(world, *train, mark=mark)
    assert proc.wait(timeout=1800) == 0, log.read_text()[-3000:]
    m = re.search(r"train: resumed from step_(\d{8})\.pt \(epoch \d+, step (\d+)\)", log.read_text())
    assert m and int(m.group(1)) == int(m.group(2)) == newest, log.read_text()[-3000:]
    resumed = _curve(world)
    assert [int(r["step"]) for r in resumed] == list(range(1, 11))
    # the rows before the checkpoint it resumed from are the killed run's, unchanged; the rest are new and finite
    kept = [r for r in killed if int(r["step"]) <= newest]
    assert kept and resumed[:len(kept)] == kept
    assert all(np.isfinite(float(r["loss"])) for r in resumed)


ABLATION_FLOW = r"""
import json, sys
from flows.ablation import cocu_ablation
res = cocu_ablation(config_path=sys.argv[1])
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    arts = {a.key: a for a in c.read_artifacts() if a.key}
print(json.dumps({"upstream": res["upstream"], "seconds": res["seconds"], "runs": res["runs"], "artifacts": sorted(arts),
                  "report_artifact": arts["abl-ablation-report"].data, "summary": res["summary"]}))
"""


def test_ablation_flow_on_the_pipelines_work_folder_then_stage_reuses_runs(world):
    """Why: `cocu_ablation` (2 arms x 2 seeds x 2 steps) on the work folder the pipeline filled: its upstream is the
    pipeline's own stages through curation (all cache hits, the same cache keys), for the one variant the arms
    read; then `ablation_stage` in process (every run reused, a lost evaluation redone alone) and the
    missing-archive error. Last in the module: it only adds the ablation folder and its own runs."""
    from PIL import Image

    from cocu_core.ablation import AblationError, ablation_stage
    from cocu_core.config import config_from_dict, load_config
    from cocu_core.io import read_json, read_manifest

    data = world["cfg"].model_dump(mode="json")
    data["name"] = "abl"
    data["train"].update(max_steps=2)
    data["eval"].update(max_images=6)
    data["ablation"].update(arms=["baseline", "cocu"], seeds=[0, 1], epochs=1, map_images=2)
    path = world["tmp"] / "abl.yaml"
    path.write_text(yaml.safe_dump(config_from_dict(data, "<test>").model_dump(mode="json")))
    out = subprocess.run([sys.executable, "-c", ABLATION_FLOW, str(path)], capture_output=True, text=True, timeout=900,
                         env=world["env"], cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(res["summary"])
    # upstream: the pipeline's own stages through curation, for the one variant the arms read: here all reused
    # from the pipeline's run in this folder (so the ablation keys its inputs exactly as the pipeline does)
    assert list(res["upstream"]) == ["cocu"]
    up = res["upstream"]["cocu"]
    assert set(STAGES[:STAGES.index("curate") + 1]) <= set(up) and all(up.values()), up
    assert "train" not in up and "evaluate" not in up
    assert [(r["arm"], r["seed"]) for r in res["runs"]] == [("baseline", 0), ("cocu", 0), ("baseline", 1), ("cocu", 1)]
    assert not any(r["cached"] for r in res["runs"]) and all(r["steps"] == 2 for r in res["runs"])
    assert {"abl-ablation", "abl-ablation-report", "abl-ablation-progress"} <= set(res["artifacts"])
    assert "data:image/png;base64," in res["report_artifact"] and "| arm | mIoU |" in res["report_artifact"]

    abl = world["cfg"].workpath / "ablation"
    # identical budget and data order: per seed, both arms' train manifests hold the same training fields
    fields = {(a, s): read_manifest(abl / "runs" / a / f"seed{s}" / "train")["config_fields"]
              for a in ("baseline", "cocu") for s in (0, 1)}
    assert fields["baseline", 0] == fields["cocu", 0] and fields["baseline", 1] == fields["cocu", 1]
    assert fields["cocu", 0]["train.seed"] == 0 and fields["cocu", 1]["train.seed"] == 1
    assert fields["cocu", 0]["train.epochs"] == 1
    table = read_json(abl / "table.json")
    for arm in ("baseline", "cocu"):
        e = table["arms"][arm]
        assert e["seeds"] == [0, 1]
        for key in ("mIoU", "painting_mIoU", "stuff_mIoU", "thing_mIoU", "top1"):
            vals = [r[key] for r in res["runs"] if r["arm"] == arm]
            assert e[key]["values"] == pytest.approx(vals) and e[key]["std"] is not None
            assert e[key]["mean"] == pytest.approx(sum(vals) / 2)
            assert e[key]["se"] == pytest.approx(e[key]["std"] / 2 ** 0.5)  # the cells' spread: 2 seeds
    md = (abl / "table.md").read_text()
    assert md.count("±") == 10 and "baseline" in md and "CoCu" in md  # 2 arms x 5 metrics
    assert Image.open(abl / "loss_curves.png").format == "PNG"
    maps = sorted((abl / "maps").glob("*.png"))
    assert 1 <= len(maps) <= 2 and {m["path"] for m in table["maps"]} == {str(m) for m in maps}
    heights = [Image.open(m).height for m in maps]
    assert all(h > 2 * 192 for h in heights)  # two rows (baseline above CoCu) of tiles at least 192 px high
    report = (abl / "report.md").read_text()
    assert "](loss_curves.png)" in report and f"](maps/{maps[0].name})" in report
    assert "## What training sees" in report
    signal_rows = table["training_signal"].splitlines()
    assert signal_rows[0].startswith("| arm | GT concepts in prompts |")
    assert [r.split(" | ")[0] for r in signal_rows[2:4]] == ["| baseline", "| cocu"]  # one row per arm, in order

    # in process: every run and the report reused
    cfg = load_config(path)
    rep = ablation_stage(cfg, log=lambda m: None, progress=False)
    assert rep["cached"] and len(rep["runs"]) == 4
    # a lost evaluation is redone, alone; its numbers are the same (same checkpoint, same data)
    (abl / "runs" / "cocu" / "seed1" / "evaluate" / "manifest.json").unlink()
    rep2 = ablation_stage(cfg, log=lambda m: None, progress=False)
    assert [r["cached"] for r in rep2["runs"]] == [True, True, True, False]
    assert rep2["runs"][3]["mIoU"] == pytest.approx(res["runs"][3]["mIoU"])
    # the redone evaluation has the same cache key (same checkpoint and data), so the report is reused as is
    assert rep2["cached"] and rep2["arms"] == rep["arms"]
    # an arm whose archives were never curated (v2's exist here since test 3): one error naming the folder and
    # the command
    assert not (world["cfg"].workpath / "curate" / "v3").exists()
    v3 = load_config(path, {"ablation": {"arms": ["baseline", "v3"]}})
    with pytest.raises(AblationError, match=r"curate/v3.*--set curation.variant=v3"):
        ablation_stage(v3, log=lambda m: None, progress=False, config_name=str(path))
