"""End to end through the real `cocu run` on a tiny toy config (slow: real Prefect, img2dataset, clip-retrieval,
autofaiss, GroupViT training and evaluation).

One work folder and one PREFECT_HOME are shared by the tests of this module, in order:
  1. `kill -9` of the `cocu run` process group during embedding: no process of the run remains;
     Ctrl-C (SIGINT to the group, as a terminal sends it) during embedding: exit 130 with one line naming
     the stage and saying a rerun resumes, no Prefect connection errors, no process left;
  2. a full run (resuming), then a rerun that is all cache hits; every stage's outputs and artifacts;
     `cocu status` says done, and stale with the field that changed;
  3. `kill -9` during `--only curate`, then a rerun one shard at a time: finished shards skipped, the archives
     equal those curated three at a time;
  4. `kill -9` during training, then a rerun: it resumes from the last checkpoint with the same loss curve.
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

import pytest
import yaml

from ingest_fixtures import small_config
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
    ps = marked_processes(mark).values()
    return any("cocu_core.embed_runner" in c for c in ps) and any("spawn_main" in c for c in ps)


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
    assert set(_summary_stages(out)) == set(STAGES) and not all(_summary_stages(out).values())
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

    st = _cocu(world, "status", "-c", str(world["path"]))
    assert st.returncode == 0, st.stderr
    states = {ln.split()[0]: ln.split()[1] for ln in st.stdout.splitlines()[1:] if not ln.strip().startswith("-")}
    assert states == dict.fromkeys(STAGES, "done"), st.stdout
    st = _cocu(world, "status", "-c", str(world["path"]), "--set", "curation.n_neighbours=4", "--set", "train.lr=0.001")
    states = {ln.split()[0]: ln.split()[1] for ln in st.stdout.splitlines()[1:] if not ln.strip().startswith("-")}
    assert states["embed"] == "done" and states["curate"] == "stale" and states["train"] == "stale", st.stdout
    assert "curation.n_neighbours: 8 -> 4" in st.stdout and "train.lr: 0.0016 -> 0.001" in st.stdout
    assert "upstream 'train' is stale" in st.stdout  # evaluate follows its checkpoint


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


def _curve(world) -> list[dict]:
    """Why: the curve's values (step, epoch, losses, learning rate); its timing columns differ run to run."""
    import csv

    rows = csv.DictReader((world["cfg"].workpath / "train" / "cocu" / "loss_curve.csv").open())
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def test_sigkill_during_training_resumes_with_the_same_curve(world):
    import shutil

    train = ["--only", "train", "--set", "train.max_steps=10", "--set", "train.checkpoint_every=2",
             "--set", "train.log_every=1"]
    train_dir = world["cfg"].workpath / "train" / "cocu"
    mark = uuid.uuid4().hex
    proc, log = _start(world, *train, mark=mark)  # uninterrupted reference
    assert proc.wait(timeout=1800) == 0, log.read_text()[-3000:]
    reference = _curve(world)
    assert len(reference) == 10

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
    mark = uuid.uuid4().hex
    proc, log = _start(world, *train, mark=mark)
    assert proc.wait(timeout=1800) == 0, log.read_text()[-3000:]
    assert "train: resumed from step_" in log.read_text()
    resumed = _curve(world)  # the curve continues where it stopped: same steps and rates, the same losses
    assert [(r["step"], r["epoch"], r["lr"]) for r in resumed] == [(r["step"], r["epoch"], r["lr"]) for r in reference]
    for a, b in zip(resumed, reference):  # to float noise: MKL may use fewer threads on a busy machine
        assert all(abs(float(a[k]) - float(b[k])) < 1e-4 for k in ("loss", "loss_image_text", "loss_multi_label")), (a, b)
