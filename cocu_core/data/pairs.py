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

INPUT_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("sample_id", pa.string())])


def read_url_list(path: str | Path, input_format: str = "parquet", url_col: str = "url",
                  caption_col: str = "caption", id_col: str = "key") -> pa.Table:
    """Why: any list (our toy list, CC3M's TSV) becomes one (url, caption, sample_id) table in list order."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"url list not found: {p}")
    if input_format == "parquet":
        table = pq.read_table(p)
    elif input_format in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(
            p, parse_options=pacsv.ParseOptions(delimiter="," if input_format == "csv" else "\t", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    else:
        raise ConfigError(f"data.input_format '{input_format}': a caption column is required; use parquet, csv or tsv")
    for col, key in ((url_col, "data.url_col"), (caption_col, "data.caption_col")):
        if col not in table.column_names:
            raise ConfigError(f"{key} '{col}' is not a column of {p} (columns: {', '.join(table.column_names)})")
    n = table.num_rows
    ids = (table.column(id_col).cast(pa.string()) if id_col in table.column_names
           else pa.array([f"{i:09d}" for i in range(n)], pa.string()))
    return pa.table({"url": table.column(url_col).cast(pa.string()), "caption": table.column(caption_col).cast(pa.string()),
                     "sample_id": ids}, schema=INPUT_SCHEMA)


def read_pair_list(path: str | Path, input_format: str = "parquet", url_col: str = "url", caption_col: str = "caption",
                   id_col: str = "key") -> pa.Table:
    """Why: `data.url_list` is one list, or a folder of lists read in name order (new files named to sort
    last are appended pairs); a folder's sample ids are prefixed with their file's name, so they stay unique."""
    p = Path(path)
    if not p.is_dir():
        return read_url_list(p, input_format, url_col, caption_col, id_col)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lstrip(".") == input_format
                   and not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"url-list folder {p} holds no *.{input_format} file")
    parts = []
    for f in files:
        t = read_url_list(f, input_format, url_col, caption_col, id_col)
        ids = pc.binary_join_element_wise(pa.scalar(f.stem), t.column("sample_id"), "/")
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
