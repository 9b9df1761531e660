"""Kill safety of `run_module`: whatever stops a stage, no process of its tool's tree survives it.

The tree under test is `proc_fixtures` (spawn pool, resource tracker, a subprocess that spawns again),
the shape of img2dataset's and clip-retrieval's trees; tests/test_proc_stages.py runs the real tools.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from proc_fixtures import kill_marked, marked_processes, wait_all_gone, wait_until
from cocu_core.proc import DEATHSIG_DIR, tree_env

TESTS = str(Path(__file__).resolve().parent)
ROOT = Path(TESTS).parent

STAGE = r'''
import sys
from pathlib import Path
from cocu_core.proc import run_module
work = Path(sys.argv[1])
spec = {"ready": str(work / "ready.json"), "exit_now": sys.argv[2] == "1"}
try:
    run_module("proc_fixtures", spec, work / "spec.json", work / "tool.log", env={"PYTHONPATH": sys.argv[3]})
except KeyboardInterrupt:
    print("stage interrupted", flush=True)
    sys.exit(130)
print("stage finished", flush=True)
'''


@pytest.fixture
def stage(tmp_path):
    """Why: start a 'stage' process (own session, like `cocu run` in a terminal) whose tool tree is marked."""
    mark = uuid.uuid4().hex
    procs = []

    def start(exit_now: bool = False) -> subprocess.Popen:
        env = {**os.environ, "COCU_TEST_MARK": mark}
        p = subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path), "1" if exit_now else "0", TESTS], env=env,
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    yield start, mark, tmp_path
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    kill_marked(mark)


def _wait_tree_up(work: Path, mark: str, proc: subprocess.Popen) -> dict[int, str]:
    """Why: kill only once every process of the tree exists (pool workers, tracker, nested spawn child)."""
    ready = wait_until(lambda: (work / "ready.json").is_file() or proc.poll() is not None, timeout=120)
    assert ready and proc.poll() is None, proc.stdout.read().decode()[-2000:]
    procs = marked_processes(mark)
    cmds = " | ".join(procs.values())
    # stage + runner + 2 pool workers + resource tracker + nested subprocess + its spawn child
    assert len(procs) >= 7 and "resource_tracker" in cmds and "spawn_main" in cmds, cmds
    return procs


def test_sigkill_of_the_stage_process_group_leaves_nothing(stage):
    start, mark, work = stage
    proc = start()
    _wait_tree_up(work, mark, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # `kill -9` of the group: no cleanup code of ours runs
    proc.wait()
    assert wait_all_gone(mark) == {}


def test_runner_killed_alone_takes_its_workers_with_it(stage):
    start, mark, work = stage
    proc = start()
    _wait_tree_up(work, mark, proc)
    runner = json.loads((work / "ready.json").read_text())["pid"]
    os.kill(runner, signal.SIGKILL)  # e.g. the OOM killer picks the runner: its spawn workers must follow
    proc.wait()
    assert proc.returncode != 0 and b"exited with code -9" in proc.stdout.read()
    assert wait_all_gone(mark) == {}


def test_ctrl_c_stops_the_stage_and_its_whole_tree(stage):
    start, mark, work = stage
    proc = start()
    _wait_tree_up(work, mark, proc)
    os.kill(proc.pid, signal.SIGINT)  # the stage's own cleanup (KeyboardInterrupt) kills the runner's group
    proc.wait(timeout=60)
    assert proc.returncode == 130 and b"stage interrupted" in proc.stdout.read()
    assert wait_all_gone(mark) == {}


def test_finished_runner_leaves_no_straggler(stage):
    start, mark, work = stage
    proc = start(exit_now=True)
    proc.wait(timeout=120)
    assert proc.returncode == 0 and b"stage finished" in proc.stdout.read()
    assert "left a child behind" in (work / "tool.log").read_text()
    assert wait_all_gone(mark) == {}


def test_tree_env_puts_the_hook_first_and_caps_threads(tmp_path):
    env = tree_env({"PYTHONPATH": "/somewhere"}, threads=3)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(DEATHSIG_DIR), "/somewhere"]
    assert env["COCU_DIE_WITH_PARENT"] == "1"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    # the hook shadows no other sitecustomize: one found further on the path still runs
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['COCU_CHAINED'] = 'yes'\n")
    code = "import os, ctypes; print(os.environ.get('COCU_CHAINED'), ctypes.CDLL(None).prctl(2, ctypes.byref(x := ctypes.c_int())), x.value)"
    r = subprocess.run([sys.executable, "-c", code], env=tree_env({"PYTHONPATH": str(tmp_path)}), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["yes", "0", str(int(signal.SIGKILL))]  # PR_GET_PDEATHSIG: the hook ran, then the chained one
