"""The scale benchmark's report: its arithmetic on made-up rows, partial runs shown as not measured, resumed stages
priced by the images they computed (no timing is measured here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_scale import PAPER_PAIRS, report  # noqa: E402


def row(stage, seconds, cpu, **kw):
    return {"stage": stage, "seconds": seconds, "cpu_seconds": cpu, "peak_anon": 512 * 2**20, **kw}


def test_report_table_extrapolation_and_missing_stages(tmp_path):
    small = {"n": 1000, "disk": {"embed": 3000, "embed/parts": 1000, "index": 500, "curate": 100},
             "rows": [row("embed", 2, 1.0), row("index", 4, 2.0), row("curate", 9, 4.0, computed_images=1000)]}
    (tmp_path / "bench_scale_1000.json").write_text(json.dumps(small))
    big = tmp_path / "big"
    big.mkdir()
    (big / "index").mkdir()
    (big / "index" / "x").write_bytes(b"\0" * 8000)
    (big / "curate").mkdir()  # a partial curate folder: no curate row, so not counted
    (big / "curate" / "x").write_bytes(b"\0" * 999)
    rows = [row("index", 99, 99.0), row("index", 40, 30.0),  # a rerun: the later row wins
            row("curate-sample", 70, 60.0, curate_seconds=33, curate_cpu_seconds=31.0, computed_images=4000, shards=4,
                shard_seconds=[10, 8, 8, 7], shard_cpu_seconds=[10.0, 7.0, 7.0, 7.0])]
    (big / "bench_scale_10000.rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")

    out = report([tmp_path / "bench_scale_1000.json", big / "bench_scale_10000.rows.jsonl"])
    first = out.split("Extrapolation")[0]
    table = {ln.split(" | ")[0].strip("| "): ln for ln in first.splitlines() if ln.startswith("| ")}
    assert "not measured" in table["embed"] and "not measured" in table["curate"]
    # index: 1000 / 2 = 500 pairs per CPU s, 10000 / 30 = 333; per-pair ratio (30/10000) / (2/1000) = 1.50
    assert "500 / 512" in table["index"] and "333 / 512" in table["index"] and "1.50x (10,000 / 1,000)" in table["index"]
    # the sample leaves out its first shard: 3000 images in 21 CPU s
    assert "23 / 21 / 143 / 512 (3 shards after the first of 4" in table["curate-sample"]
    ext = out.split("Extrapolation")[1]
    cpu_h_index = 30.0 / 10000 * PAPER_PAIRS / 3600  # 22.5 h
    assert f"| index | 10,000 | {cpu_h_index:.1f} | {cpu_h_index / 2:.1f} | {cpu_h_index / 16:.1f} |" in ext
    cpu_h_curate = 21.0 / 3000 * PAPER_PAIRS / 3600  # the larger sample wins over the full stage at 1000
    assert f"| curate | 10,000 (sample of shards; full stage measured at 1,000) | {cpu_h_curate:.1f} |" in ext
    cpu_h_embed = 1.0 / 1000 * PAPER_PAIRS / 3600
    assert f"| embed | 1,000 | {cpu_h_embed:.1f} | {cpu_h_embed:.1f} | {cpu_h_embed:.1f} |" in ext
    total2 = cpu_h_embed + cpu_h_index / 2 + cpu_h_curate / 2
    assert f"**{total2:.1f}**" in ext
    disk = out.split("Disk at 27M")[1]
    assert f"index {8000 / 10000 * PAPER_PAIRS / 2**30:,.1f} GiB (10,000)" in disk  # the larger run's folder
    assert f"curate {100 / 1000 * PAPER_PAIRS / 2**30:,.1f} GiB (1,000)" in disk  # the partial folder is not used
    assert f"clip-retrieval parts (float16) {1000 / 1000 * PAPER_PAIRS / 2**30:,.1f} GiB" in disk
    assert f"assembled embeddings + metadata {2000 / 1000 * PAPER_PAIRS / 2**30:,.1f} GiB" in disk


def test_resumed_curate_is_priced_by_computed_images(tmp_path):
    run = {"n": 10000, "disk": {}, "rows": [row("curate", 50, 20.0, computed_images=5000, cached_shards=5)]}
    (tmp_path / "bench_scale_10000.json").write_text(json.dumps(run))
    out = report([tmp_path / "bench_scale_10000.json"])
    assert "| curate | 50 / 20 / 250 / 512 | - |" in out  # 5000 computed images / 20 CPU s, not 10000 / 20
