"""Serve a folder over loopback HTTP so the real img2dataset downloads the toy world.

The server binds 127.0.0.1 on a free port, runs in a daemon thread, is quiet, and always frees
its port when the context exits (even on error).
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa

from cocu_core.io import write_parquet_atomic

URLS_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("key", pa.string())])


class _QuietHandler(SimpleHTTPRequestHandler):
    """Why: img2dataset makes thousands of requests; per-request logging would drown the output."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        return


class LoopbackServer:
    """A static file server on 127.0.0.1:<free port> for one directory."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"cannot serve {root}: not a directory")
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: Optional[threading.Thread] = None

    @property
    def base_url(self) -> str:
        """Why: URL lists are written against the port actually bound."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> "LoopbackServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="cocu-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Why: shut down and close the socket so the port is free for the next run."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@contextmanager
def serve_directory(root: str | Path) -> Iterator[LoopbackServer]:
    """Why: `with serve_directory(d) as srv:` guarantees the port is released on exit."""
    srv = LoopbackServer(root).start()
    try:
        yield srv
    finally:
        srv.stop()


def write_url_list(pairs: pa.Table, base_url: str, out_path: str | Path, split_prefix: str = "") -> pa.Table:
    """Why: img2dataset reads a `url, caption` Parquet list; the key column keeps our sample ids."""
    prefix = base_url.rstrip("/") + "/" + (split_prefix.strip("/") + "/" if split_prefix else "")
    files = pairs.column("file").to_pylist()
    table = pa.table(
        {
            "url": [prefix + f for f in files],
            "caption": pairs.column("caption"),
            "key": pairs.column("key"),
        },
        schema=URLS_SCHEMA,
    )
    write_parquet_atomic(out_path, table, URLS_SCHEMA, 1, {"base_url": base_url})
    return table
