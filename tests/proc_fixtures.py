"""Process-tree helpers for the kill-safety tests, and a stand-in tool tree to run under `run_module`.

`python -m proc_fixtures spec.json` behaves like img2dataset/clip-retrieval: spawn pool workers, the
multiprocessing resource tracker, a plain subprocess that spawns again, all sleeping until killed;
it writes `spec["ready"]` once every process is up.

Every test run marks its processes with an environment variable (inherited by every descendant,
whatever its parent or session), so "no process of the run remains" is a scan of /proc.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

NESTED = """
import multiprocessing as mp, sys, time
def sleep_forever(_):
    time.sleep(3600)
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=sleep_forever, args=(0,))
    p.start()
    open(sys.argv[1], "w").write("up")
    time.sleep(3600)
"""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def marked_processes(mark: str) -> dict[int, str]:
    """Why: every live process whose environment carries `COCU_TEST_MARK=mark` -> its command line."""
    needle = f"COCU_TEST_MARK={mark}".encode()
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        if needle in _read(d / "environ").split(b"\0"):
            stat = _read(d / "stat").decode(errors="replace")
            if ") Z" in stat:  # a zombie holds no memory and runs nothing; it only waits to be reaped
                continue
            out[int(d.name)] = _read(d / "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    return out


def processes_mentioning(text: str) -> dict[int, str]:
    """Why: processes whose command line names a test's folder (spec files, outputs)."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        cmd = _read(d / "cmdline").replace(b"\0", b" ").decode(errors="replace")
        if text in cmd and int(d.name) != os.getpid():
            out[int(d.name)] = cmd.strip()
    return out


def wait_until(cond, timeout: float = 60.0, every: float = 0.05):
    """Why: wait for a behaviour (not a speed): poll `cond` until it returns something truthy or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(every)


def wait_all_gone(mark: str, timeout: float = 20.0) -> dict[int, str]:
    """Why: what is still alive of a run once its processes had `timeout` seconds to die (empty = clean)."""
    return wait_until(lambda: not marked_processes(mark), timeout) and {} or marked_processes(mark)


def kill_marked(mark: str) -> None:
    """Why: a failing test must not leave its processes behind for the next one."""
    for pid in marked_processes(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def sleep_forever(_: int) -> None:
    time.sleep(3600)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("exit_now"):  # finish at once, leaving a child behind that never exits by itself
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print("left a child behind", flush=True)
        return 0
    ctx = mp.get_context("spawn")
    lock = ctx.Lock()  # a named semaphore: starts the resource tracker, as img2dataset's pools do
    pool = ctx.Pool(2)
    pool.map_async(sleep_forever, range(2))
    nested_ready = Path(spec["ready"] + ".nested")
    subprocess.Popen([sys.executable, "-c", NESTED, str(nested_ready)])
    while not nested_ready.exists():
        time.sleep(0.05)
    Path(spec["ready"]).write_text(json.dumps({"pid": mp.current_process().pid, "lock": str(lock)}))
    time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
