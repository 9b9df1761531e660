"""Download stage: the real img2dataset turns a `url, caption` list into webdataset shards, resumably.

Layout of ``out_dir`` (``<workdir>/download``)::

    input.parquet     the list as given to img2dataset (url, caption, sample_id), empty captions removed
    shards/           img2dataset output: NNNNN.tar (webdataset), NNNNN.parquet (per-sample status),
                      NNNNN_stats.json (per-shard stats; its presence marks a finished shard)
    samples.parquet   one row per attempted sample: key, sample_id, url, caption, status, error_message, shard
    report.json       success rate, failures by reason, throughput, per-shard stats
    manifest.json     inputs fingerprint, config fields, counts, versions (written last)
    state.json        present only while a run is unfinished: which cache key the partial shards belong to
    img2dataset.log   img2dataset's own output

Resuming: img2dataset's ``incremental`` mode skips shards whose ``_stats.json`` exists and rewrites
the others from scratch (a half-written ``.tar`` is reopened with "wb"), so nothing is re-fetched or
duplicated. Before each run we also drop stats files that do not match their shard's files.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu_core.config import ConfigError, PipelineConfig, fingerprint
from cocu_core.proc import run_module
from cocu_core.io import read_json, read_manifest, stage_is_current, write_json_atomic, write_manifest, write_parquet_atomic

# Fields that change what is downloaded; processes/threads only change speed and are recorded, not keyed.
DOWNLOAD_FIELDS = [
    "data.image_size",
    "data.resize_mode",
    "data.shard_size",
    "data.timeout",
    "data.retries",
    "data.input_format",
    "data.url_col",
    "data.caption_col",
]
RUNTIME_FIELDS = ["data.processes", "data.threads"]
INPUT_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("sample_id", pa.string())])
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


def _validate_done_shards(shards: Path, trusted: set[str]) -> list[str]:
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
        run_module("cocu_core.data._i2d_runner", spec, log_path.parent / "img2dataset_spec.json", log_path, poll)
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


def download_stage(
    url_list: str | Path,
    out_dir: str | Path,
    cfg: PipelineConfig,
    base_url: Optional[str] = None,
    id_col: str = "key",
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Why: download a pair list once into shards; reruns resume unfinished shards or hit the cache.

    `base_url`: the list was written by `write_url_list` against a loopback server at this address;
    it is stripped from URLs before fingerprinting, so a new port is not a new list.

    Returns the stage report (also `report.json`): counts, success rate, failures by reason,
    throughput, per-shard stats, and `cached`.
    """
    d = cfg.data
    out = Path(out_dir)
    shards = out / "shards"
    if base_url is None:
        raw = read_pair_list(url_list, d.input_format, d.url_col, d.caption_col, id_col)
    else:  # a list we wrote against a loopback server (`write_url_list`): fixed Parquet columns
        raw = read_url_list(url_list, "parquet", "url", "caption", id_col)
    table, rejected = clean_pairs(raw)
    fp = list_fingerprint(table, base_url)
    fields = cfg.fields_for(DOWNLOAD_FIELDS)
    if stage_is_current(out, fp, fields) and (out / "report.json").is_file():
        rep = read_json(out / "report.json")
        rep["cached"] = True
        return rep

    cache_key = fingerprint({"inputs": fp, "config": fields})
    state = read_json(out / "state.json") if (out / "state.json").is_file() else {}
    n = table.num_rows
    prev = read_manifest(out)
    if state.get("cache_key") == cache_key and state.get("segments"):
        segments, generation = state["segments"], state["generation"]  # resuming this very list
    else:
        segments = append_segments(prev, table, base_url, fields)
        if segments is None:  # a new or different list (or settings): nothing is reusable
            if shards.exists():
                shutil.rmtree(shards)
            (out / "manifest.json").unlink(missing_ok=True)
            (out / JOURNAL).unlink(missing_ok=True)
            segments, generation = [{"first_shard": 0, "rows": n}], cache_key
        else:  # appended rows: the finished shards stay (and are trusted); leftovers of other attempts go
            generation = prev.get("generation", prev["cache_key"])
            old = {shard_name(i) for i in range(int(prev["n_shards"]))}
            for f in shards.glob("*"):
                if f.is_file() and f.name.split("_")[0].split(".")[0] not in old:
                    f.unlink()
            write_json_atomic(out / JOURNAL, {"shards": sorted(old)})
            if log:
                log(f"download: {segments[-1]['rows']} pairs appended to the list; the {prev['rows']} downloaded "
                    "before are kept")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "state.json", {"cache_key": cache_key, "started_at": time.time(), "segments": segments,
                                           "generation": generation})
    write_parquet_atomic(out / "input.parquet", table, INPUT_SCHEMA, 1, {"list_fingerprint": fp})
    shards.mkdir(exist_ok=True)
    dropped = _validate_done_shards(shards, read_journal(out))
    n_shards = n_shards_of(segments, d.shard_size) if n else 0
    i2d_input = out / "input.parquet"
    if len(segments) > 1:
        i2d_input = out / "i2d_input.parquet"
        write_parquet_atomic(i2d_input, img2dataset_input(table, segments, d.shard_size), INPUT_SCHEMA, 1)
    done_before = {f.name.split("_")[0] for f in shards.glob("*_stats.json")}
    resumed = len(done_before)
    t0 = time.time()
    if n and resumed < n_shards:
        spec = {
            "url_list": str(i2d_input.resolve()),
            "input_format": "parquet",
            "url_col": "url",
            "caption_col": "caption",
            "save_additional_columns": ["sample_id"],
            "output_format": "webdataset",
            "output_folder": str(shards.resolve()),
            "image_size": d.image_size,
            "resize_mode": d.resize_mode,
            "number_sample_per_shard": d.shard_size,
            "processes_count": d.processes,
            "thread_count": d.threads,
            "timeout": d.timeout,
            "retries": d.retries,
            "incremental_mode": "incremental",
            "enable_wandb": False,
            "distributor": "multiprocessing",
            "extract_exif": False,
            "oom_shard_count": OOM_SHARD_COUNT,
        }
        if log:
            log(f"download: {n} pairs -> {n_shards} shards ({resumed} already done) with img2dataset")
        run_img2dataset(spec, out / "img2dataset.log", n_shards, shards, progress, done_before)
    elapsed = time.time() - t0
    missing = [shard_name(i) for i in range(n_shards) if not (shards / f"{shard_name(i)}_stats.json").is_file()]
    if missing:
        raise RuntimeError(f"img2dataset left shards {', '.join(missing)} unfinished (see {out / 'img2dataset.log'}); "
                           "rerun the stage to resume them")
    samples, shard_stats = collect_samples(shards, n_shards)
    if samples.num_rows != n or len(set(samples.column("key").to_pylist())) != n:
        raise RuntimeError(f"download produced {samples.num_rows} sample records for {n} input pairs (duplicates or losses)")
    write_parquet_atomic(out / "samples.parquet", samples, SAMPLES_SCHEMA, 1)
    rep = build_report(raw.num_rows, rejected, samples, shard_stats, elapsed, done_before, dropped)
    rep["shards_pattern"] = shards_brace(shards, n_shards)
    rep["n_shards"] = n_shards
    new_shards = {shard_name(i) for i in range(segments[-1]["first_shard"], n_shards)}
    new_status = [st for st, sh in zip(samples.column("status").to_pylist(), samples.column("shard").to_pylist())
                  if sh in new_shards]
    rep["segments"] = len(segments)
    rep["new_pairs"] = segments[-1]["rows"]  # rows of the list not downloaded before (all of them on a fresh list)
    rep["new_success"] = sum(st == "success" for st in new_status)
    write_json_atomic(out / "report.json", rep)
    write_manifest(out, "download", fp, fields, counts={k: rep[k] for k in ("input", "attempted", "success", "failed", "rejected")},
                   extra={"runtime": cfg.fields_for(RUNTIME_FIELDS), "n_shards": n_shards,
                          "shards_pattern": rep["shards_pattern"], "rows": n, "segments": segments,
                          "generation": generation})
    (out / "state.json").unlink(missing_ok=True)
    (out / "i2d_input.parquet").unlink(missing_ok=True)
    (out / JOURNAL).unlink(missing_ok=True)
    rep["cached"] = False
    return rep


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


def build_report(n_input: int, rejected: dict[str, int], samples: pa.Table, shard_stats: list[dict[str, Any]],
                 elapsed: float, done_before: set[str], dropped: list[str]) -> dict[str, Any]:
    """Why: the stage's outcome as data (for a Prefect table artifact and the manifest)."""
    reasons: Counter = Counter()
    status = samples.column("status").to_pylist()
    for st, msg in zip(status, samples.column("error_message").to_pylist()):
        if st != "success":
            reasons[failure_reason(st or "unknown", msg)] += 1
    for k, v in rejected.items():
        reasons[f"rejected: {k}"] += v
    success = sum(s == "success" for s in status)
    attempted = samples.num_rows
    return {
        "input": n_input,
        "rejected": sum(rejected.values()),
        "attempted": attempted,
        "success": success,
        "failed": attempted - success,
        "success_rate": round(success / n_input, 4) if n_input else 0.0,
        "failures_by_reason": dict(reasons.most_common()),
        "seconds": round(elapsed, 2),
        "throughput_per_s": (round(sum(s["count"] for s in shard_stats if s["shard"] not in done_before) / elapsed, 1)
                             if elapsed > 0 else None),
        "shards_resumed": len(done_before),
        "shards_redone_after_check": dropped,
        "shards": shard_stats,
    }


def report_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Why: Prefect table artifacts want flat rows: one per metric, then one per failure reason."""
    rows = [{"item": k, "value": rep[k]} for k in ("input", "rejected", "attempted", "success", "failed", "success_rate",
                                                   "seconds", "throughput_per_s", "shards_resumed") if k in rep]
    rows += [{"item": f"failure: {r}", "value": c} for r, c in rep.get("failures_by_reason", {}).items()]
    rows.append({"item": "cache", "value": "hit" if rep.get("cached") else "computed"})
    return rows


def read_download_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Why: the embed stage needs the shard pattern and count; fail clearly if download never finished."""
    m = read_manifest(out_dir)
    if not m:
        raise FileNotFoundError(f"no finished download stage in {out_dir}; run the download stage first")
    return m
