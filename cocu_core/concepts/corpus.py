"""The corpus's caption concepts and sample keys as memory-mapped files, built once by streaming the metadata.

Why: every curation shard looks up the concepts and keys of arbitrary neighbour rows of the whole
corpus. Held in memory that is ~20 bytes per pair in every process (0.5 GB at 27M pairs); as
files, the kernel shares and drops the pages, and a shard task on another machine opens them by path.

Layout of a folder (``<workdir>/curation_inputs/<key>/``)::

    concept_offsets.npy   (N+1,) int64: row i's concept ids are ids[offsets[i]:offsets[i+1]]
    concept_ids.bin       raw int32 concept ids (raw: the length is known only at the end of the pass)
    key_offsets.npy       (N+1,) int32 Arrow string offsets of the sample keys (row order)
    key_data.bin          raw UTF-8 bytes of the sample keys
    manifest.json         the inputs key, row count and the checks run (written last: marks completion)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.io import read_manifest, write_manifest

CORPUS_VERSION = 1
BATCH_ROWS = 65_536
MAX_KEY_BYTES = 2**31 - 1  # Arrow `string` offsets are int32


class CorpusKeyError(ValueError):
    """Sample keys that are duplicated, out of order or too long for one Arrow string array."""


def metadata_batches(metadata: str | Path, columns: Sequence[str], rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Why: read a column subset of the embed metadata a batch at a time, whatever its row groups."""
    pf = pq.ParquetFile(metadata)
    yield from pf.iter_batches(batch_size=rows, columns=list(columns))


def metadata_rows(metadata: str | Path, start: int, end: int, columns: Sequence[str]) -> pa.Table:
    """Why: rows [start, end) of the metadata (one shard), reading only the row groups that hold them."""
    pf = pq.ParquetFile(metadata)
    md = pf.metadata
    bounds = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    groups = [i for i in range(md.num_row_groups) if bounds[i] < end and bounds[i + 1] > start]
    if not groups:
        return pf.schema_arrow.empty_table().select(list(columns))
    table = pf.read_row_groups(groups, columns=list(columns))
    return table.slice(start - int(bounds[groups[0]]), end - start)


def _raw(path: Path, dtype: Any, n: int) -> np.ndarray:
    """Why: numpy cannot map an empty file."""
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


def build_corpus(metadata: str | Path, out_dir: str | Path, inputs_key: str,
                 extract: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
                 extra_checks: Optional[Callable[[], dict[str, Any]]] = None) -> Path:
    """Why: one streaming pass: keys checked strictly increasing (unique), concepts extracted per batch.

    `extract(captions) -> (offsets, ids)` is the CSR of one batch; `extra_checks()` adds results to
    the manifest. Written into a temporary folder renamed into place, so readers never see half of it."""
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        n = pq.read_metadata(metadata).num_rows
        coff = np.lib.format.open_memmap(tmp / "concept_offsets.npy", "w+", np.int64, (n + 1,))
        koff = np.lib.format.open_memmap(tmp / "key_offsets.npy", "w+", np.int32, (n + 1,))
        coff[0] = koff[0] = 0
        row, n_ids, n_bytes, last = 0, 0, 0, None
        with open(tmp / "concept_ids.bin", "wb") as fids, open(tmp / "key_data.bin", "wb") as fkeys:
            for batch in metadata_batches(metadata, ["key", "caption"]):
                keys = batch.column(0).cast(pa.string())
                k = len(keys)
                _check_keys(keys, last, metadata)
                last = keys[k - 1].as_py()
                data = keys.buffers()[2]
                offs = np.frombuffer(keys.buffers()[1], np.int32, k + 1, keys.offset * 4)
                lo = int(offs[0])
                if n_bytes + int(offs[-1]) - lo > MAX_KEY_BYTES:
                    raise CorpusKeyError(f"{metadata}: sample keys exceed 2 GiB in total; shorten the keys")
                fkeys.write(memoryview(data)[lo:int(offs[-1])])
                koff[row + 1:row + k + 1] = offs[1:] - lo + n_bytes
                n_bytes += int(offs[-1]) - lo
                captions = [c or "" for c in batch.column(1).to_pylist()]
                o, ids = extract(captions)
                fids.write(np.ascontiguousarray(ids, np.int32).tobytes())
                coff[row + 1:row + k + 1] = np.asarray(o[1:], np.int64) + n_ids
                n_ids += int(o[-1])
                row += k
        if row != n:
            raise CorpusKeyError(f"{metadata}: read {row} rows, its footer says {n}")
        for a in (coff, koff):
            a.flush()
        del coff, koff
        checks = extra_checks() if extra_checks else {}
        write_manifest(tmp, "curation_inputs", inputs_key, {"version": CORPUS_VERSION},
                       {"rows": n, "concept_ids": n_ids, "key_bytes": n_bytes}, {"checks": checks})
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same folder first: keep theirs
            if not read_manifest(out):
                raise
        for other in out.parent.iterdir():  # older inputs of this workdir are not read any more
            if other.is_dir() and other != out and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_keys(keys: pa.Array, last: Optional[str], metadata: str | Path) -> None:
    """Why: sorted, unique keys are what the embed stage promises; anything else would misjoin archives."""
    import pyarrow.compute as pc

    if len(keys) == 0:
        return
    if keys.null_count:
        raise CorpusKeyError(f"{metadata}: null sample keys")
    if len(keys) > 1:
        a, b = keys.slice(0, len(keys) - 1), keys.slice(1)
        bad = pc.less_equal(b, a)
        if pc.any(bad).as_py():
            i = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            what = "duplicate sample keys" if a[i].as_py() == b[i].as_py() else "sample keys out of order"
            raise CorpusKeyError(f"{metadata}: {what}: {a[i].as_py()!r}, {b[i].as_py()!r}")
    if last is not None and keys[0].as_py() <= last:
        what = "duplicate sample keys" if keys[0].as_py() == last else "sample keys out of order"
        raise CorpusKeyError(f"{metadata}: {what}: {last!r}, {keys[0].as_py()!r}")


@dataclass(frozen=True)
class Corpus:
    """The opened files: CSR concepts and an Arrow array of keys, all backed by memory maps."""

    offsets: np.ndarray
    ids: np.ndarray
    keys: pa.StringArray
    manifest: dict[str, Any]


def open_corpus(folder: str | Path) -> Corpus:
    """Why: zero-copy views: opening costs nothing and pages load only when a row is touched."""
    d = Path(folder)
    m = read_manifest(d)
    if not m:
        raise FileNotFoundError(f"no finished curation inputs in {d}")
    n, n_ids, n_bytes = m["counts"]["rows"], m["counts"]["concept_ids"], m["counts"]["key_bytes"]
    offsets = np.load(d / "concept_offsets.npy", mmap_mode="r")
    koff = np.load(d / "key_offsets.npy", mmap_mode="r")
    if len(offsets) != n + 1 or len(koff) != n + 1:
        raise FileNotFoundError(f"{d}: offsets do not match its manifest ({n} rows); delete the folder to rebuild it")
    ids = _raw(d / "concept_ids.bin", np.int32, n_ids)
    data = _raw(d / "key_data.bin", np.uint8, n_bytes)
    keys = pa.StringArray.from_buffers(n, pa.py_buffer(koff), pa.py_buffer(data) if n_bytes else pa.py_buffer(b""))
    return Corpus(offsets, ids, keys, m)
