"""The work-folder lock (`cocu_core.lock`): one writing run per work folder, a stale lock taken over, readers pinned.

Holders are real other processes (a lock is per process: a flow's threads share it), started with `python -c`;
a holder is frozen with SIGSTOP where a test needs it to hold the lock for as long as the test runs.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from ingest_fixtures import small_config
from proc_fixtures import wait_until
from cocu_core.layout import lock_path
from cocu_core.lock import EXCLUSIVE, SHARED, WorkFolderBusy, folder_lock, held, read_holder, state_line

ROOT = Path(__file__).resolve().parent.parent

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cocu_core.lock import folder_lock
    path, mode, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    with folder_lock(path, mode, 0, what="the test's holder"):
        print("held", flush=True)
        time.sleep(seconds)
    print("released", flush=True)
""")


def _holder(path: Path, mode: str = EXCLUSIVE, seconds: float = 60) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode, str(seconds)], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path):
    path = tmp_path / ".cocu.lock"
    p = _holder(path)
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkFolderBusy) as e:
            with folder_lock(path, EXCLUSIVE, timeout=0.5, what="second"):
                pass
        waited = time.monotonic() - t0
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"work folder {tmp_path} is in use by the test's holder (pid {p.pid} "
                                                  f"on {socket.gethostname()}, since ")
        assert "waited 0.5 s (runtime.lock_timeout)" in msg
        assert waited >= 0.5
        assert state_line(path).startswith(f"held by the test's holder (pid {p.pid}")
        with pytest.raises(WorkFolderBusy):  # a reader waits for a writer too
            with folder_lock(path, SHARED, timeout=0):
                pass
    finally:
        p.kill()
        p.wait()


def test_a_waiting_writer_gets_the_lock_when_the_holder_finishes(tmp_path):
    path = tmp_path / ".cocu.lock"
    p = _holder(path, seconds=1.0)
    lines: list[str] = []
    with folder_lock(path, EXCLUSIVE, timeout=30, what="second", log=lines.append):
        assert p.wait(timeout=30) == 0 and p.stdout.read().strip() == "released"
        assert read_holder(path)["what"] == "second" and read_holder(path)["pid"] == os.getpid()
    assert len(lines) == 1 and lines[0].startswith(f"waiting up to 30 s for the work folder {tmp_path}: in use by the "
                                                   f"test's holder (pid {p.pid}")
    assert read_holder(path) is None and state_line(path) == "free"  # a clean release leaves no holder behind


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / ".cocu.lock"
    p = _holder(path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert read_holder(path)["pid"] == p.pid  # the killed holder's record is still in the file
    assert state_line(path).startswith(f"free (left by the test's holder (pid {p.pid}") and "died holding it" in \
        state_line(path)
    lines: list[str] = []
    with folder_lock(path, EXCLUSIVE, timeout=0, what="next run", log=lines.append):
        assert read_holder(path)["pid"] == os.getpid()
    assert len(lines) == 1 and lines[0].startswith(f"took over the work-folder lock left by the test's holder (pid "
                                                   f"{p.pid}") and lines[0].endswith("which is no longer running")


def test_readers_share_the_lock_and_keep_a_writer_out(tmp_path):
    path = tmp_path / ".cocu.lock"
    p = _holder(path, SHARED)
    try:
        with folder_lock(path, SHARED, timeout=0):  # a second reader beside the first
            assert held(path) == SHARED
        with pytest.raises(WorkFolderBusy, match="in use by a training or evaluation pinning its inputs"):
            with folder_lock(path, EXCLUSIVE, timeout=0):
                pass
    finally:
        p.kill()
        p.wait()
    assert held(path) is None


def test_one_process_reenters_its_own_lock(tmp_path):
    path = tmp_path / ".cocu.lock"
    with folder_lock(path, EXCLUSIVE, what="flow"):
        with folder_lock(path, SHARED):  # the train stage inside a flow that holds the work folder
            with folder_lock(path, EXCLUSIVE):
                assert held(path) == EXCLUSIVE
        assert held(path) == EXCLUSIVE and read_holder(path)["what"] == "flow"
        p = subprocess.run([sys.executable, "-c", HOLD, str(path), EXCLUSIVE, "0"], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode != 0 and "WorkFolderBusy" in p.stderr and "in use by flow" in p.stderr
    assert held(path) is None
    with folder_lock(path, SHARED):
        with pytest.raises(RuntimeError, match="holds the lock shared and asks for it exclusively"):
            with folder_lock(path, EXCLUSIVE):
                pass


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.parquet"))}


TRAIN = textwrap.dedent("""
    import sys, yaml
    from cocu_core.config import config_from_dict
    from cocu_core.stages.train import train_stage
    cfg = config_from_dict(yaml.safe_load(open(sys.argv[1])), sys.argv[1])
    rep = train_stage(cfg, variant="oracle", progress=False)
    print("steps", rep["steps"], flush=True)
""")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A small toy world and its train split downloaded by the real img2dataset (the oracle archive's inputs)."""
    from test_oracle import cfg_for
    from cocu_core.config import ToyWorldConfig
    from cocu_core.stages.download import download_stage
    from cocu_core.toyworld import generate_world, serve_directory, write_url_list, read_pairs

    root = tmp_path_factory.mktemp("lock")
    w = root / "work"
    cfg = cfg_for(w)
    generate_world(w / "toyworld", ToyWorldConfig(seed=3, n_web=0, n_train=48, n_val=0), workers=2)
    with serve_directory(w / "toyworld" / "train") as srv:
        write_url_list(read_pairs(w / "toyworld" / "train"), srv.base_url, root / "urls.parquet")
        download_stage(root / "urls.parquet", w / "download", cfg, base_url=srv.base_url, progress=False)
    return w


@pytest.mark.slow  # kills or trains real processes (tens of seconds): CI runs it, make test-fast does not
def test_a_training_waits_for_a_curation_in_progress(work):
    from test_oracle import cfg_for
    from cocu_core.stages.train import train_stage

    cfg = cfg_for(work, max_steps=2)
    p = _holder(lock_path(cfg))
    try:
        with pytest.raises(WorkFolderBusy, match="is in use by the test's holder"):
            train_stage(cfg, variant="oracle", progress=False, log=lambda m: None)
    finally:
        p.kill()
        p.wait()
    assert not (work / "train" / "oracle" / "archives").exists()


@pytest.mark.slow  # kills or trains real processes (tens of seconds): CI runs it, make test-fast does not
def test_a_running_training_keeps_reading_the_archives_it_started_with(work, tmp_path):
    """Re-curation (the exclusive lock, then new archive files) goes ahead while a training runs; the training's
    pinned archives keep the bytes it started with, and it finishes on them."""
    import shutil

    from test_oracle import cfg_for
    from cocu_core.curation import ArchiveReader, write_archive
    from cocu_core.io import parquet_metadata

    w = tmp_path / "w"
    shutil.copytree(work / "toyworld", w / "toyworld")
    shutil.copytree(work / "download", w / "download")
    cfg = cfg_for(w, max_steps=6)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(path)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pin = w / "train" / "oracle" / "archives"
    try:
        wait_until(lambda: (pin / "pin.json").is_file() or proc.poll() is not None, 300)
        proc.send_signal(signal.SIGSTOP)  # the training holds no work-folder lock now: re-curation may run
        before = _hashes(w / "curate" / "oracle")
        assert _hashes(pin) == before and before
        with folder_lock(lock_path(cfg), EXCLUSIVE, timeout=0, what="re-curation"):
            for f in sorted((w / "curate" / "oracle").glob("*.parquet")):  # a re-curation rewrites every archive
                t = ArchiveReader(f.parent).table.slice(0, 1)  # atomic replace, as curation writes
                write_archive(f, pa.Table.from_pylist(t.to_pylist(), schema=t.schema), parquet_metadata(f))
                break
        assert _hashes(w / "curate" / "oracle") != before
        proc.send_signal(signal.SIGCONT)
        out = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out[-2000:]
    assert "steps 6" in out
    assert _hashes(pin) == before  # what the training read, to its end
    assert len(ArchiveReader(pin)) > 1


@pytest.mark.slow
def test_two_concurrent_cocu_runs_on_one_work_folder(tmp_path):
    """The first run holds the work folder (frozen by SIGSTOP while it does); a second run refuses in one line; a third
    with a lock timeout waits, then finds the first's outputs done (cache hits)."""
    cfg = small_config(tmp_path / "run", name="locks")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    def start(tag: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{tag}.log"
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{tag}")}
        p = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "-c", str(path), "--only", "toyworld", *extra],
                             cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        return p, log

    first, log1 = start("first")
    try:
        wait_until(lambda: read_holder(lock_path(cfg)) is not None or first.poll() is not None, 300)
        holder = read_holder(lock_path(cfg))
        assert holder and holder["what"].startswith("cocu_pipeline flow run "), log1.read_text()[-3000:]
        os.kill(holder["pid"], signal.SIGSTOP)  # the flow's process (`cocu run` starts it in a session of its own)
        second, log2 = start("second")
        assert second.wait(timeout=300) == 2, log2.read_text()[-3000:]
        err = [ln for ln in log2.read_text().splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and err[0].startswith(f"error: work folder {cfg.workpath} is in use by "
                                                   f"{holder['what']} (pid {holder['pid']} ")
        third, log3 = start("third", "--set", "runtime.lock_timeout=600")
        wait_until(lambda: "waiting up to 600 s for the work folder" in log3.read_text() or third.poll() is not None,
                   300)
        os.kill(holder["pid"], signal.SIGCONT)
        assert first.wait(timeout=600) == 0, log1.read_text()[-3000:]
        assert third.wait(timeout=600) == 0, log3.read_text()[-3000:]
    finally:
        holder = read_holder(lock_path(cfg))
        if holder:
            try:
                os.kill(holder["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    done = [ln for ln in log3.read_text().splitlines() if "finished in" in ln]
    assert len(done) == 1 and "stages: toyworld" in done[0] and "(cached)" in done[0]  # the first run's work, kept
    assert (cfg.workpath / "toyworld" / "world.json").is_file()
    assert read_holder(lock_path(cfg)) is None


def test_status_shows_the_schedule_and_the_lock(tmp_path):
    from cocu_core.config import load_config
    from cocu_core.stages import format_status, pipeline_status

    cfg = load_config(ROOT / "configs" / "toy.yaml", {"workdir": str(tmp_path / "w")})
    text = format_status(pipeline_status(cfg), cfg)
    assert "re-curation schedule (deployment cocu-recurate, set by `cocu deploy`): cron '0 3 * * *' (UTC)" in text
    assert text.splitlines()[-1] == "work-folder lock: free"
    p = _holder(lock_path(cfg))
    try:
        assert format_status(pipeline_status(cfg), cfg).splitlines()[-1].startswith(
            f"work-folder lock: held by the test's holder (pid {p.pid} on ")
    finally:
        p.kill()
        p.wait()
    cfg = load_config(ROOT / "configs" / "toy.yaml", {"workdir": str(tmp_path / "w"), "runtime": {"recurate_cron": None}})
    assert "set by `cocu deploy`): none" in format_status(pipeline_status(cfg), cfg)
