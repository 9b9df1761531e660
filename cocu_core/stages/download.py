"""download: the real img2dataset turns a `url, caption` list into webdataset shards, resumably.

Reads   data.url_list (or, for the toy world, toyworld/train served on 127.0.0.1 while it downloads)
Writes  download/ (layout below)
Key     list_fingerprint(the cleaned list, loopback address stripped) + FIELDS; RUNTIME_FIELDS recorded, not keyed

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

import math
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.config import ConfigError, PipelineConfig, fingerprint
from cocu_core.data.pairs import (INPUT_SCHEMA, clean_pairs, list_columns, list_files, list_fingerprint, read_pair_list,
                                  read_url_list)
from cocu_core.data.shards import (JOURNAL, OOM_SHARD_COUNT, SAMPLES_SCHEMA, append_segments, collect_samples,
                                   failure_reason, img2dataset_input, n_shards_of, read_journal, run_img2dataset,
                                   shard_name, shards_brace, validate_done_shards)
from cocu_core.io import (read_json, read_manifest, stage_is_current, write_json_atomic, write_manifest,
                          write_parquet_atomic)
from cocu_core.layout import stage_dir, toy_split, url_list_dir
from cocu_core.stages.base import DONE, Context, Report, Stage, StageStatus, compare
from cocu_core.toyworld import read_pairs, serve_directory, write_url_list

# Fields that change what is downloaded; processes/threads only change speed and are recorded, not keyed.
FIELDS = [
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
        raw = read_pair_list(url_list, d.input_format, d.url_col, d.caption_col, id_col, cfg.storage.options)
    else:  # a list we wrote against a loopback server (`write_url_list`): fixed Parquet columns
        raw = read_url_list(url_list, "parquet", "url", "caption", id_col)
    table, rejected = clean_pairs(raw)
    fp = list_fingerprint(table, base_url)
    fields = cfg.fields_for(FIELDS)
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
    dropped = validate_done_shards(shards, read_journal(out))
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


def run(ctx: Context) -> Report:
    """Why: the toy world's train split is served on loopback only while img2dataset downloads it; a real
    config downloads its `data.url_list`."""
    cfg, out = ctx.cfg, ctx.dir("download")
    if cfg.data.source == "toyworld":
        split = toy_split(cfg, "train")
        with serve_directory(split) as srv:
            url_list = url_list_dir(cfg) / "train.parquet"
            write_url_list(read_pairs(split), srv.base_url, url_list)
            return download_stage(url_list, out, cfg, base_url=srv.base_url, log=ctx.log, progress=ctx.progress)
    return download_stage(cfg.data.url_list, out, cfg, log=ctx.log, progress=ctx.progress)


def preflight(cfg: PipelineConfig) -> None:
    """Why: mistakes in the pair list (missing file, missing column) are one clear line before any stage runs,
    on the command line and in a deployment's flow-run state alike; only headers are read."""
    d = cfg.data
    if d.source != "url_list":
        return
    opts = cfg.storage.options
    for f in list_files(d.url_list or "", d.input_format, opts)[0]:
        cols = list_columns(f, d.input_format, opts)
        for col, key in ((d.url_col, "data.url_col"), (d.caption_col, "data.caption_col")):
            if col not in cols:
                raise ConfigError(f"{key} '{col}' is not a column of {f} (columns: {', '.join(cols)})")


def _url_table(cfg: PipelineConfig):
    """Why: the list the download stage would read now (for the toy world: its train split, loopback URLs)."""
    if cfg.data.source == "toyworld":
        pairs = read_pairs(toy_split(cfg, "train"))
        table = pa.table({"url": [f"{_LOOPBACK}/{f}" for f in pairs.column("file").to_pylist()],
                          "caption": pairs.column("caption").cast(pa.string()),
                          "sample_id": pairs.column("key").cast(pa.string())})
        return clean_pairs(table)[0], _LOOPBACK
    return clean_pairs(read_pair_list(cfg.data.url_list, cfg.data.input_format, cfg.data.url_col,
                                      cfg.data.caption_col, options=cfg.storage.options))[0], None


_LOOPBACK = "http://127.0.0.1:1"


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the download is current when its manifest carries the key of the list it would read now."""
    fields = cfg.fields_for(FIELDS)
    folder = stage_dir(cfg, "download")
    needs = {k: v for k, v in up.items() if k == "toyworld"}
    if any(s.state != DONE for s in needs.values()):
        st = compare("download", folder, None, fields, needs)
        return st
    table, base = _url_table(cfg)
    m = read_manifest(folder) or {}
    n_before = (m.get("counts") or {}).get("input")
    why = f"the url list changed ({table.num_rows} usable pairs now" + (f", {n_before} listed when it ran)" if n_before is not None else ")")
    return compare("download", folder, list_fingerprint(table, base), fields, needs, why)


def probe(cfg: PipelineConfig) -> Callable[[], tuple[float, str]]:
    """Why: shards finished so far, read from img2dataset's per-shard stats files."""
    out = stage_dir(cfg, "download")

    def read() -> tuple[float, str]:
        rows = pq.read_metadata(out / "input.parquet").num_rows if (out / "input.parquet").is_file() else 0
        total = max(1, math.ceil(rows / cfg.data.shard_size))
        done = sum(1 for _ in (out / "shards").glob("*_stats.json")) if (out / "shards").is_dir() else 0
        return done / total, f"download: {done}/{total} shards"

    return read


STAGE = Stage("download", needs=("toyworld",), run=run, status=status, fields=tuple(FIELDS), probe=probe)
