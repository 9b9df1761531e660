"""The work-folder lock: one writing run per work folder; readers pin their inputs under a shared hold.

Why: two runs on one work folder (a scheduled re-curation beside a manual `cocu run`, or the previous
re-curation still going) would interleave manifests, shards and archive versions; atomic file writes
keep single files whole, not a run. Every run that writes the work folder's stages holds the lock
exclusively; a training or evaluation takes it shared only while it pins what it reads (so it waits
for a curation in progress, never for another reader), then holds its own output folder's lock.

The lock is an ``flock`` on ``<workdir>/.cocu.lock``: the kernel drops it when the holding process
dies, so a lock left by a killed run is taken over by the next one (which says so). The exclusive
holder writes who it is (pid, host, what, since) into the file, for the one-line refusal others print.
Holds are counted per process, so a flow's stages (threads of one process) re-enter the lock freely.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from cocu_core.errors import CocuError

EXCLUSIVE, SHARED = "exclusive", "shared"


class WorkFolderBusy(CocuError):
    """Another run holds the lock past `runtime.lock_timeout`."""


@dataclass
class _Hold:
    fd: int
    mode: str
    count: int


_holds: dict[str, _Hold] = {}
_guard = threading.Lock()


def read_holder(path: Path) -> Optional[dict]:
    """Why: who holds (or, after a crash, last held) the lock exclusively, from the file itself."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        rec = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def describe(holder: Optional[dict]) -> str:
    """Why: the holder as a user reads it in the one-line refusal."""
    if not holder:
        return "a training or evaluation pinning its inputs (shared hold)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"{holder.get('what', 'a run')} (pid {holder.get('pid')} on {holder.get('host')}, since {since})"


def pid_alive(pid: int) -> bool:
    """Why: on the holder's own host, a recorded pid that no longer runs means the lock is free to take over."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state_line(path: Path) -> str:
    """Why: `cocu status` says who holds the lock without probing it (a probe could make a starting run refuse)."""
    holder = read_holder(path)
    if not holder:
        return "free"
    if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1))):
        return f"free (left by {describe(holder)}, which died holding it; the next run takes it over)"
    return f"held by {describe(holder)}"


def _try(fd: int, mode: str) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if mode == EXCLUSIVE else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _acquire(path: Path, mode: str, timeout: float, what: str, log: Callable[[str], None]) -> None:
    key = str(path.resolve())
    with _guard:
        hold = _holds.get(key)
        if hold is not None:
            if mode == EXCLUSIVE and hold.mode == SHARED:
                raise RuntimeError(f"{path}: this process holds the lock shared and asks for it exclusively")
            hold.count += 1
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline, waiting = time.monotonic() + max(0.0, timeout), False
    while not _try(fd, mode):
        holder = read_holder(path)
        if time.monotonic() >= deadline:
            os.close(fd)
            raise WorkFolderBusy(
                f"work folder {path.parent} is in use by {describe(holder)}; waited {timeout:g} s "
                f"(runtime.lock_timeout); rerun when it has finished, or raise runtime.lock_timeout to wait")
        if not waiting:
            log(f"waiting up to {timeout:g} s for the work folder {path.parent}: in use by {describe(holder)}")
            waiting = True
        time.sleep(0.2)
    if mode == EXCLUSIVE:
        left = read_holder(path)
        if left:  # a clean release empties the file: this names a holder that died holding it
            log(f"took over the work-folder lock left by {describe(left)}, which is no longer running")
        rec = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(rec).encode(), 0)
        os.fsync(fd)
    with _guard:
        _holds[key] = _Hold(fd, mode, 1)


def _release(path: Path) -> None:
    key = str(path.resolve())
    with _guard:
        hold = _holds[key]
        hold.count -= 1
        if hold.count:
            return
        del _holds[key]
    if hold.mode == EXCLUSIVE:
        os.ftruncate(hold.fd, 0)  # an empty file after a clean release: a non-empty one names a crashed holder
    fcntl.flock(hold.fd, fcntl.LOCK_UN)
    os.close(hold.fd)


@contextmanager
def folder_lock(path: Path, mode: str = EXCLUSIVE, timeout: float = 0.0, what: str = "a cocu run",
                log: Callable[[str], None] = print) -> Iterator[Path]:
    """Why: hold the lock file `path` (exclusive: one writer; shared: readers beside each other) for a block;
    wait up to `timeout` seconds, then refuse with one line naming the holder."""
    _acquire(Path(path), mode, timeout, what, log)
    try:
        yield Path(path)
    finally:
        _release(Path(path))


def held(path: Path) -> Optional[str]:
    """Why: callers (and tests) can ask whether this process holds a lock, and how."""
    hold = _holds.get(str(Path(path).resolve()))
    return hold.mode if hold else None


class Lease:
    """Why: a hold a flow takes at its start and gives back part-way (before training), not at a block's end."""

    def __init__(self, path: Path, mode: str = EXCLUSIVE, timeout: float = 0.0, what: str = "a cocu run",
                 log: Callable[[str], None] = print):
        self.path, self.active = Path(path), False
        _acquire(self.path, mode, timeout, what, log)
        self.active = True

    def release(self) -> None:
        if self.active:
            self.active = False
            _release(self.path)
