"""Numbered versions of a variant's concept archives, so re-curation never pulls archives from under a reader.

Layout of ``<workdir>/archives/<variant>/``::

    v0001/archive_NNNNN.parquet ...   a published version (hard links to the archive files, else copies)
    v0001/version.json                number, time, content hash per archive file, pairs, upstream keys
    v0002/ ...

Archive files are written atomically (a new file replaces the old name), so a hard link in a version
folder keeps the old content readable after the working folder (`curate/<variant>`) is re-curated.
A version folder is read like the working one (`ArchiveReader(version_dir)`). Only the newest
`keep` versions are kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu_core import storage
from cocu_core.errors import CocuError
from cocu_core.io import read_json, write_json_atomic
from cocu_core.layout import versions_root  # noqa: F401  (re-exported: the archives folder is declared in layout)


def version_dir(root: Path, number: int) -> Path:
    return root / f"v{number:04d}"


def list_versions(root: Path) -> list[int]:
    """Why: published versions in order (a folder counts once its version.json exists)."""
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("v") and d.name[1:].isdigit() and (d / "version.json").is_file():
            out.append(int(d.name[1:]))
    return sorted(out)


def file_hash(path: Path) -> str:
    """Why: a version records what each archive file holds, so unchanged archives are recognised."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _archive_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("archive_*.parquet") if not p.name.startswith("."))


def _concept_rows(files: list[Path]) -> pa.Table:
    """Why: (key, concepts joined into one string) per image, so versions compare with vectorised joins."""
    t = pa.concat_tables([pq.read_table(f, columns=["key", "concepts"]) for f in files])
    return pa.table({"key": t.column("key"), "c": pc.binary_join(t.column("concepts"), "\x1f")})


def compare_archives(old_dir: Optional[Path], new_dir: Path) -> dict[str, int]:
    """Why: what re-curation changed: archive files (shards) rewritten with other content, and old images whose
    curated concepts differ (their neighbourhoods changed as new images arrived)."""
    new_files = {p.name: file_hash(p) for p in _archive_files(new_dir)}
    if old_dir is None:
        return {"files": len(new_files), "files_changed": 0, "files_new": len(new_files), "old_images": 0,
                "old_images_changed": 0}
    old_files = read_json(old_dir / "version.json")["files"]
    old = _concept_rows(_archive_files(old_dir))
    new = _concept_rows(_archive_files(new_dir)).rename_columns(["key", "c_new"])
    joined = old.join(new, "key", join_type="left outer")
    differs = pc.or_kleene(pc.is_null(joined.column("c_new")), pc.not_equal(joined.column("c"), joined.column("c_new")))
    return {"files": len(new_files),
            "files_changed": sum(1 for n, h in new_files.items() if n in old_files and old_files[n] != h),
            "files_new": sum(1 for n in new_files if n not in old_files), "old_images": old.num_rows,
            "old_images_changed": int(pc.sum(pc.fill_null(differs, True)).as_py() or 0)}


def _linked_copy(files: list[Path], tmp: Path) -> Path:
    """Why: a fresh temporary folder holding hard links to `files` (copies across file systems), renamed by the caller."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for p in files:
        try:
            os.link(p, tmp / p.name)
        except OSError:  # another file system: copy
            shutil.copy2(p, tmp / p.name)
    return tmp


def publish_version(archive_dir: Path, root: Path, keep: int, info: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Why: freeze the working archives as the next version (unless identical to the latest one), report what
    changed against the latest, and drop versions beyond the newest `keep`."""
    files = _archive_files(archive_dir)
    if not files:
        raise FileNotFoundError(f"no archives to publish in {archive_dir}; run the curate stage first")
    hashes = {p.name: file_hash(p) for p in files}
    have = list_versions(root)
    latest = version_dir(root, have[-1]) if have else None
    if latest is not None and read_json(latest / "version.json")["files"] == hashes:
        return {**read_json(latest / "version.json"), "new_version": False, "pruned": []}
    number = (have[-1] + 1) if have else 1
    final = version_dir(root, number)
    tmp = _linked_copy(files, root / f".{final.name}.tmp")
    changes = compare_archives(latest, archive_dir)
    record = {"version": number, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": hashes,
              "previous": have[-1] if have else None, "changes": changes, **(info or {})}
    write_json_atomic(tmp / "version.json", record)
    tmp.rename(final)
    pruned = []
    for n in list_versions(root)[:-keep]:
        shutil.rmtree(version_dir(root, n))
        pruned.append(n)
    return {**record, "new_version": True, "pruned": pruned}


def pin_archives(src: Path, dest: Path) -> Path:
    """Why: a training reads a frozen set of the archives (hard links: no copy, and the content a link names never
    changes, since archive writes replace files), so a re-curation publishing meanwhile cannot change its inputs,
    also when it resumes. An existing pin is kept: the training's cache key already says it holds these archives."""
    if (dest / "pin.json").is_file():
        return dest
    files = sorted(p for p in Path(src).glob("*.parquet") if not p.name.startswith("."))
    tmp = _linked_copy(files, dest.parent / f".{dest.name}.tmp")
    write_json_atomic(tmp / "pin.json", {"source": str(src), "files": [p.name for p in files],
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def remote_versions(remote_root: str, options=None) -> list[int]:
    """Why: the versions a reader may trust on an object store: those whose version.json is there (it is written
    last, so a publish killed part-way leaves objects no version names)."""

    fs, path = storage.filesystem(remote_root, options)
    fs.invalidate_cache()
    if not storage.call(remote_root, fs.exists, path):
        storage.kind(remote_root, options)  # a missing bucket is an error, an empty prefix is no versions
        return []
    out = []
    for e in storage.call(remote_root, fs.ls, path, detail=True):
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if e.get("type") == "directory" and name.startswith("v") and name[1:].isdigit() and \
                storage.call(remote_root, fs.exists, f"{e['name'].rstrip('/')}/version.json"):
            out.append(int(name[1:]))
    return sorted(out)


def sync_remote_versions(root: Path, remote_root: str, keep: int, options=None,
                         log=None) -> dict[str, list[int]]:
    """Why: every local version the object store lacks is written there (archive files, then version.json), and
    remote versions beyond the newest `keep` removed (version.json first, so a reader never trusts a half-deleted
    one); a rerun after a kill finishes what was left."""

    have = set(remote_versions(remote_root, options))
    written = []
    for number in list_versions(root):
        if number in have:
            continue
        local = version_dir(root, number)
        dest = storage.join(remote_root, local.name)
        rec = read_json(local / "version.json")
        for name in sorted(rec["files"]):
            storage.put_file(local / name, storage.join(dest, name), options)
        storage.put_file(local / "version.json", storage.join(dest, "version.json"), options)
        written.append(number)
        if log:
            log(f"archives: version {number} written to {dest}")
    pruned = []
    for number in remote_versions(remote_root, options)[:-keep]:
        dest = storage.join(remote_root, f"v{number:04d}")
        storage.remove(storage.join(dest, "version.json"), options)
        storage.remove(dest, options)
        pruned.append(number)
    return {"written": written, "pruned": pruned}


class VersionIntegrityError(ValueError, CocuError):
    """A remote archive version whose objects do not match its version.json."""


def fetch_version(remote_root: str, number: int, dest: Path, options=None) -> Path:
    """Why: a published version copied from the object store into a local folder (readers memory-map local files),
    each file checked against the checksum its version.json records; nothing is in place until all are."""
    import json


    if number not in remote_versions(remote_root, options):
        raise storage.StorageError(f"no archive version {number} at {remote_root} (versions there: "
                                   f"{remote_versions(remote_root, options) or 'none'})")
    src = storage.join(remote_root, f"v{number:04d}")
    rec = json.loads(storage.read_bytes(storage.join(src, "version.json"), options))
    tmp = dest.parent / f".{dest.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, digest in sorted(rec["files"].items()):
        storage.get_file(storage.join(src, name), tmp / name, options)
        got = file_hash(tmp / name)
        if got != digest:
            shutil.rmtree(tmp)
            raise VersionIntegrityError(
                f"{storage.join(src, name)} does not match its version.json (sha256 {got}..., recorded {digest}...): "
                "not trusted")
    write_json_atomic(tmp / "version.json", rec)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
