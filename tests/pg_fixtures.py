"""A throwaway PostgreSQL server for the deployment tests, as production Prefect servers run on (Debian's postgresql).

Why its own cluster: the test starts and stops it itself (initdb in a temporary folder, a free loopback port, trust
auth on 127.0.0.1 only), so no system service or password is involved. Postgres refuses to run as root: as root the
cluster belongs to the `postgres` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed: `make test` installs Debian's postgresql "
                    "(scripts/test_services.sh)")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Why: a running server with a `prefect` database; yields its SQLAlchemy URL (asyncpg), stopped and removed
    afterwards. Its folder is a fresh one under /tmp: pytest's own folders are closed to the `postgres` user."""
    tmp = Path(tempfile.mkdtemp(prefix="cocu-pg-"))
    data = tmp / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(_as_owner([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    port = _free_port()
    log = tmp / "postgres.log"
    subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120", "-o",
                              f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"]),
                   check=True, capture_output=True)
    try:
        subprocess.run(_as_owner([_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect"]),
                       check=True, capture_output=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(_as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
