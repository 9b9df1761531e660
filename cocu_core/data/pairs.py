"""Pair lists: read a `url, caption` list (Parquet, CSV, TSV; one file or a folder of them), clean it, key it.

Why apart from the shards: the list is what a download's cache key is made of (`list_fingerprint`), and
`cocu status` reads it without starting img2dataset.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu_core.config import ConfigError
from cocu_core.storage import is_remote, kind, local_path, open_file
from cocu_core.storage import list_files as storage_list_files

INPUT_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("sample_id", pa.string())])


def list_files(location: str | Path, input_format: str, options=None) -> tuple[list[str | Path], bool]:
    """Why: `data.url_list` is one list file, or a folder of them (read in name order); local or an fsspec URL.
    Returns the files and whether the location is a folder."""
    if is_remote(location):
        what = kind(location, options)
        if what == "file":
            return [str(location)], False
        if what == "missing":
            raise FileNotFoundError(f"data.url_list not found: {location}")
        files: list = storage_list_files(location, input_format, options)
    else:
        p = local_path(location)
        if not p.is_dir():
            if not p.is_file():
                raise FileNotFoundError(f"data.url_list not found: {p}")
            return [p], False
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lstrip(".") == input_format
                       and not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"data.url_list folder {location} holds no *.{input_format} file")
    return files, True


def _source(path: str | Path, options=None):
    """Why: what pyarrow reads: a local path, or a file object over a remote one."""
    return open_file(path, options) if is_remote(path) else local_path(path)


def list_columns(path: str | Path, input_format: str, options=None) -> list[str]:
    """Why: a list's column names from its header (Parquet footer, CSV/TSV first line) only."""
    if input_format == "parquet":
        try:
            return list(pq.read_schema(_source(path, options)).names)
        except OSError:
            raise
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise ConfigError(f"data.url_list {path} is not a Parquet file ({type(exc).__name__}: {exc})") from None
    if input_format in ("csv", "tsv"):
        src = _source(path, options)
        fh = src if not isinstance(src, Path) else open(src, "rb")
        with fh:
            header = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        return [c.strip().strip('"') for c in header.split("," if input_format == "csv" else "\t")]
    raise ConfigError(f"data.input_format '{input_format}': a caption column is required; use parquet, csv or tsv")


def read_url_list(path: str | Path, input_format: str = "parquet", url_col: str = "url",
                  caption_col: str = "caption", id_col: str = "key", options=None) -> pa.Table:
    """Why: any list (our toy list, CC3M's TSV; local or an fsspec URL) becomes one (url, caption, sample_id) table
    in list order."""
    if not is_remote(path) and not local_path(path).is_file():
        raise FileNotFoundError(f"url list not found: {local_path(path)}")
    src = _source(path, options)
    if input_format == "parquet":
        table = pq.read_table(src)
    elif input_format in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(
            src, parse_options=pacsv.ParseOptions(delimiter="," if input_format == "csv" else "\t", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    else:
        raise ConfigError(f"data.input_format '{input_format}': a caption column is required; use parquet, csv or tsv")
    for col, key in ((url_col, "data.url_col"), (caption_col, "data.caption_col")):
        if col not in table.column_names:
            raise ConfigError(f"{key} '{col}' is not a column of {path} (columns: {', '.join(table.column_names)})")
    n = table.num_rows
    ids = (table.column(id_col).cast(pa.string()) if id_col in table.column_names
           else pa.array([f"{i:09d}" for i in range(n)], pa.string()))
    return pa.table({"url": table.column(url_col).cast(pa.string()), "caption": table.column(caption_col).cast(pa.string()),
                     "sample_id": ids}, schema=INPUT_SCHEMA)


def read_pair_list(path: str | Path, input_format: str = "parquet", url_col: str = "url", caption_col: str = "caption",
                   id_col: str = "key", options=None) -> pa.Table:
    """Why: `data.url_list` is one list, or a folder of lists read in name order (new files named to sort
    last are appended pairs); a folder's sample ids are prefixed with their file's name, so they stay unique."""
    files, folder = list_files(path, input_format, options)
    if not folder:
        return read_url_list(files[0], input_format, url_col, caption_col, id_col, options)
    parts = []
    for f in files:
        t = read_url_list(f, input_format, url_col, caption_col, id_col, options)
        stem = str(f).rsplit("/", 1)[-1].rsplit(".", 1)[0]
        ids = pc.binary_join_element_wise(pa.scalar(stem), t.column("sample_id"), "/")
        parts.append(t.set_column(2, "sample_id", ids))
    return pa.concat_tables(parts)


def clean_pairs(table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Why: a pair without a URL or with an empty caption cannot teach concepts; count it and leave it out."""
    rejected: Counter = Counter()
    keep = []
    for i, (u, c) in enumerate(zip(table.column("url").to_pylist(), table.column("caption").to_pylist())):
        if not u or not u.strip():
            rejected["missing_url"] += 1
        elif c is None or not c.strip():
            rejected["empty_caption"] += 1
        else:
            keep.append(i)
    return table.take(pa.array(keep, pa.int64())), dict(rejected)


def list_fingerprint(table: pa.Table, base_url: Optional[str] = None) -> str:
    """Why: key the cache on the list's content; a loopback `base_url` (new port each run) is stripped."""
    import hashlib

    h = hashlib.sha256()
    prefix = base_url.rstrip("/") if base_url else None
    for u, c, s in zip(*(table.column(n).to_pylist() for n in ("url", "caption", "sample_id"))):
        if prefix and u.startswith(prefix):
            u = "<base>" + u[len(prefix):]
        h.update(f"{u}\0{c}\0{s}\n".encode())
    return h.hexdigest()[:16]
