"""img2dataset shards: the run of the real img2dataset (in a process tree that dies with its parent), the journal of
finished shards, list segments for appended pairs, and the per-sample records read back from its output.

Resuming: img2dataset's ``incremental`` mode skips shards whose ``_stats.json`` exists and rewrites
the others from scratch (a half-written ``.tar`` is reopened with "wb"), so nothing is re-fetched or
duplicated. Before each run we also drop stats files that do not match their shard's files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.data.pairs import INPUT_SCHEMA, list_fingerprint
from cocu_core.io import read_json, read_manifest, write_json_atomic
from cocu_core.proc import run_module

SAMPLES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_id", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("shard", pa.string()),
    ]
)
OOM_SHARD_COUNT = 5  # img2dataset's default: shard names are 5 digits


def shard_name(i: int) -> str:
    """Why: img2dataset names shards with OOM_SHARD_COUNT zero-padded digits."""
    return f"{i:0{OOM_SHARD_COUNT}d}"


def shards_brace(shards_dir: str | Path, n_shards: int) -> str:
    """Why: clip-retrieval wants webdataset input as one brace-expansion string, not a list."""
    return f"{Path(shards_dir).resolve()}/{{{shard_name(0)}..{shard_name(max(0, n_shards - 1))}}}.tar"


JOURNAL = "done_shards.json"


def read_journal(out: Path) -> set[str]:
    """Why: the shards this stage saw finished while it was alive; only those are trusted on resume."""
    p = out / JOURNAL
    return set(read_json(p)["shards"]) if p.is_file() else set()


def journal_done_shards(out: Path, shards: Path, known: set[str]) -> set[str]:
    """Why: record newly finished shards; a worker orphaned by a crash may still mark a shard done (its
    downloads failing because the source died with us), and such a mark must not count on resume."""
    seen = {f.name.split("_")[0] for f in shards.glob("*_stats.json")}
    if seen - known:
        known = known | seen
        write_json_atomic(out / JOURNAL, {"shards": sorted(known)})
    return known


def validate_done_shards(shards: Path, trusted: set[str]) -> list[str]:
    """Why: a stats file is img2dataset's "done" mark; drop marks the journal does not vouch for and
    marks whose shard files are missing or short."""
    dropped = []
    for stats_file in sorted(shards.glob("*_stats.json")):
        name = stats_file.name.split("_")[0]
        ok = False
        try:
            if name not in trusted:
                raise ValueError("finished after the stage stopped")
            stats = json.loads(stats_file.read_text())
            tar, par = shards / f"{name}.tar", shards / f"{name}.parquet"
            ok = tar.is_file() and par.is_file() and pq.read_metadata(par).num_rows == int(stats["count"])
        except (OSError, ValueError, KeyError, pa.ArrowException):
            ok = False
        if not ok:
            for f in (stats_file, shards / f"{name}.tar", shards / f"{name}.parquet"):
                f.unlink(missing_ok=True)
            dropped.append(name)
    return dropped


def run_img2dataset(spec: dict[str, Any], log_path: Path, n_shards: int, shards: Path, progress: bool,
                    trusted: set[str]) -> None:
    """Why: img2dataset runs in a child process tree that dies with us, so a killed stage leaves no writers;
    shards seen finished while we run are journaled as trusted."""
    from tqdm import tqdm

    out = log_path.parent
    bar = tqdm(total=n_shards, initial=len(trusted), desc="download: shards", unit="shard", disable=not progress,
               leave=False)

    def poll() -> None:
        nonlocal trusted
        trusted = journal_done_shards(out, shards, trusted)
        bar.n = len(trusted)
        bar.refresh()

    try:
        run_module("cocu_core.data._runner", spec, log_path.parent / "img2dataset_spec.json", log_path, poll)
    finally:
        bar.close()


_ADDR = re.compile(r"<[^>]*>|0x[0-9a-fA-F]+")


def failure_reason(status: str, message: Optional[str]) -> str:
    """Why: group failures by a readable reason; object reprs and addresses would make every one unique."""
    msg = _ADDR.sub("<...>", (message or "").strip()).splitlines()[0] if message else ""
    return f"{status}: {msg[:120]}" if msg else status


def n_shards_of(segments: list[dict[str, int]], shard_size: int) -> int:
    """Why: every list segment starts on a shard boundary; shards end where the last segment's rows end."""
    last = segments[-1]
    return last["first_shard"] + math.ceil(last["rows"] / shard_size) if last["rows"] else last["first_shard"]


def append_segments(prev: Optional[dict[str, Any]], table: pa.Table, base_url: Optional[str],
                    fields: dict[str, Any]) -> Optional[list[dict[str, int]]]:
    """Why: a list that grew by appended rows (same rows first, same download settings) downloads only the new
    rows, as a new segment of shards after the finished ones; anything else is a different list (None)."""
    if not prev or not prev.get("segments") or prev.get("config_fields") != fields:
        return None
    n_old = int(prev["rows"])
    if table.num_rows <= n_old or list_fingerprint(table.slice(0, n_old), base_url) != prev["inputs_fingerprint"]:
        return None
    return [dict(s) for s in prev["segments"]] + [{"first_shard": int(prev["n_shards"]), "rows": table.num_rows - n_old}]


def img2dataset_input(table: pa.Table, segments: list[dict[str, int]], shard_size: int) -> pa.Table:
    """Why: img2dataset numbers shards by row position; padding each earlier segment to a whole number of shards
    puts a new segment's rows at its first shard (the padding lies in finished shards, which it never reads)."""
    parts, start = [], 0
    for k, seg in enumerate(segments):
        parts.append(table.slice(start, seg["rows"]))
        start += seg["rows"]
        if k < len(segments) - 1:
            pad = (-seg["rows"]) % shard_size
            if pad:
                parts.append(pa.table({"url": [""] * pad, "caption": [""] * pad, "sample_id": [""] * pad},
                                      schema=INPUT_SCHEMA))
    return pa.concat_tables(parts)


def collect_samples(shards: Path, n_shards: int) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Why: one table of every attempted sample (sorted by key) from img2dataset's per-shard parquet files."""
    parts, stats = [], []
    for i in range(n_shards):
        name = shard_name(i)
        t = pq.read_table(shards / f"{name}.parquet", columns=["key", "sample_id", "url", "caption", "status", "error_message"])
        t = t.append_column("shard", pa.array([name] * t.num_rows, pa.string()))
        parts.append(t.cast(SAMPLES_SCHEMA))
        s = json.loads((shards / f"{name}_stats.json").read_text())
        stats.append({"shard": name, "count": s["count"], "success": s["successes"],
                      "failed_to_download": s["failed_to_download"], "failed_to_resize": s["failed_to_resize"],
                      "seconds": round(s["duration"], 2)})
    table = pa.concat_tables(parts) if parts else SAMPLES_SCHEMA.empty_table()
    return table.sort_by("key"), stats


def read_download_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Why: the embed stage needs the shard pattern and count; fail clearly if download never finished."""
    m = read_manifest(out_dir)
    if not m:
        raise FileNotFoundError(f"no finished download stage in {out_dir}; run the download stage first")
    return m
