"""Child processes for third-party tools that start their own workers (img2dataset, clip-retrieval, torchrun).

Why: those tools use spawn-based multiprocessing and global signal handlers; running them in a child
process tree that dies with the stage keeps the caller (a Prefect flow, a test) clean, and a killed
stage leaves no orphan still writing outputs (or holding memory).

Three layers make every process of a stage's tree die with it:
  * the runner runs in its own session and process group; when the stage stops (normally, on an
    exception, on Ctrl-C), the whole group is killed;
  * the runner asks the kernel for SIGKILL when the stage process dies (PR_SET_PDEATHSIG), so a
    SIGKILLed stage (no cleanup code runs) still takes the runner down;
  * every Python process started below the runner does the same for its own parent, through the
    `sitecustomize` in ``cocu_core/_deathsig`` (put on PYTHONPATH with ``COCU_DIE_WITH_PARENT=1``),
    so spawn workers and the multiprocessing resource tracker follow level by level.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from cocu_core.io import write_json_atomic
from cocu_core.runtime import current_threads

_PR_SET_PDEATHSIG = 1
DEATHSIG_DIR = Path(__file__).resolve().parent / "_deathsig"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def die_with_parent(parent_pid: int) -> None:
    """Why: PR_SET_PDEATHSIG makes the kernel SIGKILL this process the moment its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def tree_env(env: Optional[dict[str, str]] = None, threads: Optional[int] = None) -> dict[str, str]:
    """Why: the environment of a runner whose every Python descendant dies with its parent; `threads`
    caps OpenMP/BLAS pools in the whole tree (the stage's share of the cores)."""
    base = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    paths = [str(DEATHSIG_DIR)] + [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(DEATHSIG_DIR)]
    base["PYTHONPATH"] = os.pathsep.join(paths)
    base["COCU_DIE_WITH_PARENT"] = "1"
    if threads:
        for var in _THREAD_VARS:
            base[var] = str(threads)
    return base


def group_alive(pgid: int) -> bool:
    """Why: a process group exists while any member lives (signal 0 probes without killing)."""
    try:
        os.killpg(pgid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def kill_group(pgid: int, grace_s: float = 0.0) -> None:
    """Why: stop every process of a runner's group; with `grace_s`, first let members that are exiting
    on their own (the resource tracker cleaning up) finish."""
    deadline = time.monotonic() + grace_s
    while grace_s and group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def run_module(module: str, spec: dict[str, Any], spec_path: Path, log_path: Path,
               poll: Optional[Callable[[], None]] = None, env: Optional[dict[str, str]] = None,
               threads: Optional[int] = None) -> None:
    """Why: `python -m module spec.json` with output to `log_path`, in a process tree that dies with us;
    errors carry the log tail. `threads`: OpenMP/BLAS threads of the tree (None: the caller's policy)."""
    write_json_atomic(spec_path, {**spec, "_parent_pid": os.getpid()})
    full_env = tree_env(env, threads or current_threads())
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, str(spec_path)], stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True)
        finished = False
        try:
            while proc.poll() is None:
                time.sleep(0.1)
                if poll:
                    poll()
            finished = True
        finally:
            if not finished:  # interrupted (exception, Ctrl-C, cancellation): stop the whole tree now
                kill_group(proc.pid)
                proc.wait()
            else:  # leftovers of a finished runner (a tracker still exiting) get a moment, then go too; the caller
                # need not wait for that (it was up to 2 s of a download's wall time): a non-daemon thread does it,
                # so this process still cannot exit before the group is gone
                threading.Thread(target=kill_group, args=(proc.pid, 2.0), name="cocu-reap", daemon=False).start()
            if poll:
                poll()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{module} exited with code {proc.returncode}; log {log_path}:\n{tail}")
