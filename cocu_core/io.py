"""Atomic, self-describing writes: Parquet with a versioned schema, JSON manifests.

Every write goes to a temporary name in the same folder and is renamed into place, so a crash
never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core import __version__
from cocu_core.config import fingerprint

SCHEMA_VERSION_KEY = b"cocu.schema_version"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Why: yield a temp path beside `path`; rename over it only if the body finished."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Why: small files (JSON, PNG) get the same crash safety as tables."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Why: manifests and reports are read by later stages; never leave them truncated."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """Why: symmetric helper so callers do not sprinkle open/json.load."""
    return json.loads(Path(path).read_text())


def write_parquet_atomic(
    path: str | Path,
    table: pa.Table,
    schema: Optional[pa.Schema] = None,
    schema_version: int = 1,
    metadata: Optional[dict[str, Any]] = None,
) -> None:
    """Why: Parquet on disk declares its schema and version so readers can refuse what they don't know."""
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    meta = dict(table.schema.metadata or {})
    meta[SCHEMA_VERSION_KEY] = str(schema_version).encode()
    meta[b"cocu.code_version"] = __version__.encode()
    for k, v in (metadata or {}).items():
        meta[f"cocu.{k}".encode()] = (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def parquet_schema_version(path: str | Path) -> Optional[int]:
    """Why: readers check the version field before trusting columns."""
    meta = pq.read_schema(path).metadata or {}
    v = meta.get(SCHEMA_VERSION_KEY)
    return int(v) if v is not None else None


def parquet_metadata(path: str | Path) -> dict[str, str]:
    """Why: archives record encoder and config fields in file metadata; expose them as text."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode()[5:]: v.decode() for k, v in meta.items() if k.startswith(b"cocu.")}


def write_manifest(
    stage_dir: str | Path,
    stage: str,
    inputs_fingerprint: str,
    config_fields: dict[str, Any],
    counts: dict[str, Any],
    extra: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Why: every stage leaves a record of what it consumed and produced; its presence marks completion."""
    manifest = {
        "stage": stage,
        "cache_key": fingerprint({"inputs": inputs_fingerprint, "config": config_fields}),
        "inputs_fingerprint": inputs_fingerprint,
        "config_fields": config_fields,
        "counts": counts,
        "versions": software_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(Path(stage_dir) / "manifest.json", manifest)
    return manifest


def read_manifest(stage_dir: str | Path) -> Optional[dict[str, Any]]:
    """Why: a stage is done iff its manifest exists and parses."""
    p = Path(stage_dir) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return read_json(p)
    except (OSError, json.JSONDecodeError):
        return None


def stage_is_current(stage_dir: str | Path, inputs_fingerprint: str, config_fields: dict[str, Any]) -> bool:
    """Why: skip work when a finished manifest matches this run's inputs and config fields."""
    m = read_manifest(stage_dir)
    return bool(m) and m.get("cache_key") == fingerprint({"inputs": inputs_fingerprint, "config": config_fields})


def software_versions() -> dict[str, str]:
    """Why: manifests record the versions that produced an output, for reproducibility."""
    import importlib.metadata as md

    out = {"cocu": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "pyarrow", "torch", "open_clip_torch", "faiss-cpu", "img2dataset", "clip-retrieval", "autofaiss"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
