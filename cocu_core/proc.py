"""Child processes for third-party tools that start their own workers (img2dataset, clip-retrieval).

Why: those tools use spawn-based multiprocessing and global signal handlers; running them in a child
process tree that dies with the stage keeps the caller (a Prefect flow, a test) clean, and a killed
stage leaves no orphan still writing outputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from cocu_core.io import write_json_atomic

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Why: PR_SET_PDEATHSIG makes the kernel SIGKILL this process the moment its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def run_module(module: str, spec: dict[str, Any], spec_path: Path, log_path: Path,
               poll: Optional[Callable[[], None]] = None, env: Optional[dict[str, str]] = None) -> None:
    """Why: `python -m module spec.json` with output to `log_path`; killed if we are interrupted; errors carry the log tail."""
    write_json_atomic(spec_path, {**spec, "_parent_pid": os.getpid()})
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, str(spec_path)], stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(0.3)
                if poll:
                    poll()
        finally:
            if proc.poll() is None:  # interrupted: stop our child; its own workers follow (PDEATHSIG)
                proc.kill()
                proc.wait()
            if poll:
                poll()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{module} exited with code {proc.returncode}; log {log_path}:\n{tail}")
