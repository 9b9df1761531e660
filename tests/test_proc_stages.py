"""Kill safety with the real tools: `kill -9` of a stage's process group during download (img2dataset)
and during embedding (our loop and its decode workers) leaves no process of the run alive: no spawn worker, no
resource tracker, no logger, nothing whose command line names the run's folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest_fixtures import faulty_source, small_config
from proc_fixtures import kill_marked, marked_processes, processes_mentioning, wait_all_gone, wait_until

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

DOWNLOAD = r'''
import functools, sys, threading, time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
import pyarrow.parquet as pq
sys.path.insert(0, {tests!r})
from ingest_fixtures import small_config
from cocu_core.stages.download import download_stage
from cocu_core.toyworld import write_url_list

class Slow(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        time.sleep(0.2)  # keep img2dataset busy until it is killed
        super().do_GET()

if __name__ == "__main__":
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory={src!r}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % httpd.server_address[1]
    write_url_list(pq.read_table({table!r}), base, {urls!r})
    cfg = small_config({run!r}, data={{"shard_size": 40, "processes": 2, "threads": 2}})
    download_stage({urls!r}, {run!r} + "/download", cfg, base_url=base, progress=False)
'''

EMBED = r'''
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from ingest_fixtures import small_config
from cocu_core.stages.embed import embed_stage
from cocu_core.encoder.load import encoder_fingerprint, load_encoder, model_config_paths

if __name__ == "__main__":
    cfg = small_config(Path({run!r}), data={{"shard_size": 40}})
    enc = load_encoder(cfg)
    embed_stage(cfg.workpath / "download", cfg.workpath / "embed", cfg, enc.clip_model, encoder_fingerprint(cfg),
                model_config_paths(cfg), progress=False)
'''


def _start(code: str, mark: str) -> subprocess.Popen:
    env = {**os.environ, "COCU_TEST_MARK": mark}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group_when(proc: subprocess.Popen, mark: str, ready) -> dict[int, str]:
    """Why: kill -9 the stage's process group once `ready(processes)` says the tool's tree is up."""
    try:
        seen = wait_until(lambda: proc.poll() is not None or ready(marked_processes(mark)), timeout=240, every=0.1)
        procs = marked_processes(mark)
        assert seen and proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return procs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_during_download_leaves_no_process(world_dir, tmp_path):
    src, table = faulty_source(world_dir, tmp_path / "src")
    pq.write_table(table, tmp_path / "pairs.parquet")
    mark = uuid.uuid4().hex
    code = DOWNLOAD.format(tests=str(TESTS), src=str(src), table=str(tmp_path / "pairs.parquet"),
                           urls=str(tmp_path / "urls.parquet"), run=str(tmp_path / "run"))
    try:
        procs = _kill_group_when(_start(code, mark), mark,
                                 lambda ps: sum("spawn_main" in c for c in ps.values()) >= 2)
        cmds = " | ".join(procs.values())
        assert "cocu_core.data._runner" in cmds and "resource_tracker" in cmds, cmds
        assert wait_all_gone(mark) == {}
        assert processes_mentioning(str(tmp_path)) == {}
    finally:
        kill_marked(mark)


@pytest.fixture
def downloaded_with_encoder(world_dir, toy_encoder_weights, tmp_path):
    """Why: the embed stage's inputs: real shards (40 pairs each) and a trained toy encoder (the session's, copied
    into the run's encoder folder, where the embed stage loads it from)."""
    import shutil

    from cocu_core.stages.download import download_stage
    from cocu_core.toyworld import read_pairs, serve_directory, write_url_list

    cfg = small_config(tmp_path / "run", data={"shard_size": 40})
    with serve_directory(world_dir / "train") as srv:
        write_url_list(read_pairs(world_dir / "train"), srv.base_url, tmp_path / "urls.parquet")
        download_stage(tmp_path / "urls.parquet", cfg.workpath / "download", cfg, base_url=srv.base_url, progress=False)
    shutil.copytree(toy_encoder_weights.parent, cfg.workpath / "encoder")
    return cfg


@pytest.mark.slow  # kills or trains real processes (tens of seconds): CI runs it, make test-fast does not
def test_sigkill_during_embed_leaves_no_process(downloaded_with_encoder, tmp_path):
    cfg = downloaded_with_encoder
    mark = uuid.uuid4().hex
    code = EMBED.format(tests=str(TESTS), run=str(cfg.workpath))
    try:
        # the runner and its two forked decode workers (same command line) are up: inference is under way
        procs = _kill_group_when(_start(code, mark), mark,
                                 lambda ps: sum("cocu_core.embeddings._runner" in c for c in ps.values()) >= 3)
        assert sum("cocu_core.embeddings._runner" in c for c in procs.values()) >= 3
        assert wait_all_gone(mark) == {}
        assert processes_mentioning(str(tmp_path)) == {}
        assert not (cfg.workpath / "embed" / "manifest.json").exists()  # it was really interrupted
    finally:
        kill_marked(mark)
