"""Data locations as fsspec URLs (`s3://bucket/cc12m.parquet`, `gs://...`, `file://...`, or plain local paths).

Why one module: every remote read and write goes through `fsspec` with the config's `storage.options` for its
protocol (endpoint, region, profile; credentials the way fsspec users give them: environment variables, profiles, or
these options), and every failure a user can cause (no such bucket, no credentials, a scheme with no installed
filesystem) becomes one line naming the location. Options are never written to manifests or logs: only URLs are.

Object stores have no rename, so writes there are all-or-nothing by order: each object is one PUT (whole or absent),
and the manifest naming a set of objects is written last; a reader trusts only objects a manifest names, with the
checksums it records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from cocu_core.errors import CocuError


class StorageError(OSError, CocuError):
    """A data location that cannot be reached or read; the message names it."""


def is_remote(location: str | Path) -> bool:
    """Why: local paths (and file:// URLs) keep the local code path: atomic renames, memory maps."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def local_path(location: str | Path) -> Path:
    """Why: a local location as a Path (a file:// URL's path)."""
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


def protocol(location: str | Path) -> str:
    return str(location).split("://", 1)[0] if "://" in str(location) else "file"


def _explain(exc: BaseException, location: str) -> str:
    """Why: the usual failures as what the user must change, not a driver's traceback."""
    name, text = type(exc).__name__, str(exc)
    if isinstance(exc, (ImportError, ValueError)) and ("Protocol not known" in text or "Install" in text
                                                       or "No module" in text or "not available" in text):
        return (f"no filesystem for '{protocol(location)}://' locations is installed ({text.splitlines()[0]}); "
                f"install its fsspec package (s3fs, gcsfs, adlfs, ...)")
    if "NoCredentials" in name or "Unable to locate credentials" in text or "credentials" in text.lower():
        return (f"no credentials for {location}: set them the way fsspec/boto expect (e.g. AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, a profile) or in storage.options.{protocol(location)}")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower() or "specified bucket" in text.lower():
        return f"the bucket of {location} does not exist"
    if isinstance(exc, FileNotFoundError):
        return f"not found: {location}"
    return f"cannot reach {location} ({name}: {text.splitlines()[0] if text else ''})"


def filesystem(location: str | Path, options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> tuple[Any, str]:
    """Why: (fsspec filesystem, path inside it) for a location, with the options of its protocol."""
    import fsspec

    proto = protocol(location)
    try:
        return fsspec.core.url_to_fs(str(location), **dict((options or {}).get(proto, {})))
    except Exception as exc:  # fsspec raises ValueError/ImportError for an unknown or uninstalled scheme
        raise StorageError(_explain(exc, str(location))) from None


def call(location: str | Path, fn, *args, **kwargs):
    """Why: run one filesystem operation with its failure as a one-line StorageError naming the location."""
    try:
        return fn(*args, **kwargs)
    except StorageError:
        raise
    except Exception as exc:  # s3fs/botocore/aiohttp raise many types; each becomes one line
        raise StorageError(_explain(exc, str(location))) from None


def join(location: str | Path, *parts: str) -> str:
    return "/".join([str(location).rstrip("/")] + [p.strip("/") for p in parts])


def list_files(location: str | Path, suffix: str, options=None) -> list[str]:
    """Why: a remote folder's files with `suffix` (hidden ones skipped), as full URLs in name order."""
    fs, path = filesystem(location, options)
    fs.invalidate_cache()
    found = call(location, fs.ls, path, detail=True)
    names = sorted(e["name"] for e in found if e.get("type") == "file" and e["name"].endswith(f".{suffix}")
                   and not e["name"].rsplit("/", 1)[-1].startswith("."))
    return [f"{protocol(location)}://{n}" for n in names]


BUCKETED = ("s3", "s3a", "gs", "gcs", "abfs", "az")


def kind(location: str | Path, options=None) -> str:
    """Why: 'dir', 'file' or 'missing' for a remote location; a bucket that is absent, or credentials that are, is an
    error naming the location, not 'missing' (fsspec's `exists` says False for both)."""
    fs, path = filesystem(location, options)
    fs.invalidate_cache()
    if protocol(location) in BUCKETED:
        bucket = path.split("/", 1)[0]
        try:
            fs.ls(bucket)
        except FileNotFoundError:
            raise StorageError(f"the bucket of {location} does not exist") from None
        except Exception as exc:
            raise StorageError(_explain(exc, str(location))) from None
    if call(location, fs.isdir, path):
        return "dir"
    return "file" if call(location, fs.isfile, path) else "missing"


def open_file(location: str | Path, options=None):
    """Why: a binary file object over a remote location (pyarrow reads Parquet footers and CSV through it)."""
    fs, path = filesystem(location, options)
    return call(location, fs.open, path, "rb")


def read_bytes(location: str | Path, options=None) -> bytes:
    fs, path = filesystem(location, options)
    return call(location, fs.cat_file, path)


def put_file(local: Path, location: str | Path, options=None) -> None:
    """Why: one object from a local file (a single PUT: whole or absent)."""
    fs, path = filesystem(location, options)
    call(location, fs.put_file, str(local), path)


def put_bytes(data: bytes, location: str | Path, options=None) -> None:
    fs, path = filesystem(location, options)
    call(location, fs.pipe_file, path, data)


def get_file(location: str | Path, local: Path, options=None) -> None:
    fs, path = filesystem(location, options)
    local.parent.mkdir(parents=True, exist_ok=True)
    call(location, fs.get_file, path, str(local))


def remove(location: str | Path, options=None) -> None:
    fs, path = filesystem(location, options)
    if call(location, fs.exists, path):
        call(location, fs.rm, path, recursive=True)
