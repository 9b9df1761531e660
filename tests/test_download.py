"""Download stage: real img2dataset over the loopback server; failures counted, cache hits, SIGKILL resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import CORRUPT_INDEX, EMPTY_CAPTION_INDEX, MISSING_INDEX, faulty_source, small_config
from cocu_core.config import ConfigError
from cocu_core.data.pairs import clean_pairs, list_fingerprint, read_url_list
from cocu_core.stages.download import download_stage
from cocu_core.data.shards import failure_reason
from cocu_core.toyworld import serve_directory, write_url_list


def tar_samples(shards: Path) -> list[dict]:
    """Why: read back what img2dataset actually wrote, independent of our own bookkeeping."""
    out = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {}
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for key, parts in members.items():
            meta = json.loads(parts["json"])
            out.append({"key": key, "sample_id": meta["sample_id"], "caption": parts["txt"].decode(), "has_jpg": "jpg" in parts})
    return out


def expected_ids(table: pa.Table) -> set[str]:
    bad = {CORRUPT_INDEX, MISSING_INDEX, EMPTY_CAPTION_INDEX}
    return {k for i, k in enumerate(table.column("key").to_pylist()) if i not in bad}


def test_download_counts_failures_and_hits_cache(world_dir, tmp_path):
    src, table = faulty_source(world_dir, tmp_path / "src")
    cfg = small_config(tmp_path / "run")
    out = tmp_path / "run" / "download"
    with serve_directory(src) as srv:
        urls = write_url_list(table, srv.base_url, tmp_path / "urls.parquet")
        rep = download_stage(tmp_path / "urls.parquet", out, cfg, base_url=srv.base_url, progress=False)
    n = table.num_rows
    assert not rep["cached"]
    assert (rep["input"], rep["rejected"], rep["attempted"], rep["success"], rep["failed"]) == (n, 1, n - 1, n - 3, 2)
    reasons = rep["failures_by_reason"]
    assert reasons["rejected: empty_caption"] == 1
    assert sum(c for r, c in reasons.items() if r.startswith("failed_to_download") and "404" in r) == 1
    assert sum(c for r, c in reasons.items() if r.startswith("failed_to_resize")) == 1
    assert rep["n_shards"] == 3 and rep["shards_pattern"].endswith("{00000..00002}.tar")
    written = tar_samples(out / "shards")
    assert {s["sample_id"] for s in written} == expected_ids(table)
    assert len(written) == n - 3 and all(s["has_jpg"] for s in written)
    samples = pq.read_table(out / "samples.parquet")
    assert samples.num_rows == n - 1 and len(set(samples.column("key").to_pylist())) == n - 1
    assert urls.num_rows == n
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["success"] == n - 3 and "data.image_size" in manifest["config_fields"]
    assert "img2dataset" in manifest["versions"] and not (out / "state.json").exists()

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    with serve_directory(src) as srv:  # a new port: the URL list changes, the content does not
        assert srv.base_url not in urls.column("url")[0].as_py()
        write_url_list(table, srv.base_url, tmp_path / "urls.parquet")
        again = download_stage(tmp_path / "urls.parquet", out, cfg, base_url=srv.base_url, progress=False)
    assert again["cached"] and again["success"] == rep["success"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == stamps


def test_url_list_reading_and_cleaning(tmp_path):
    p = tmp_path / "list.tsv"
    p.write_text("image_url\ttext\nhttp://a/1.jpg\ta dog\nhttp://a/2.jpg\t\n\tno url\nhttp://a/4.jpg\t  \n")
    t = read_url_list(p, "tsv", "image_url", "text")
    assert t.column_names == ["url", "caption", "sample_id"] and t.num_rows == 4
    clean, rejected = clean_pairs(t)
    assert clean.column("sample_id").to_pylist() == ["000000000"] and rejected == {"empty_caption": 2, "missing_url": 1}
    with pytest.raises(ConfigError, match="data.url_col 'url'"):
        read_url_list(p, "tsv", "url", "text")
    with pytest.raises(FileNotFoundError):
        read_url_list(tmp_path / "nope.parquet")
    a = pa.table({"url": ["http://127.0.0.1:1111/x.jpg"], "caption": ["c"], "sample_id": ["0"]})
    b = pa.table({"url": ["http://127.0.0.1:2222/x.jpg"], "caption": ["c"], "sample_id": ["0"]})
    assert list_fingerprint(a, "http://127.0.0.1:1111") == list_fingerprint(b, "http://127.0.0.1:2222")
    assert list_fingerprint(a) != list_fingerprint(b)
    assert failure_reason("failed_to_resize", "cannot identify image file <_io.BytesIO object at 0x7f00>") == \
        "failed_to_resize: cannot identify image file <...>"


KILL_CHILD = r'''
import functools, sys, time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
import threading
import pyarrow.parquet as pq
sys.path.insert(0, {tests!r})
from ingest_fixtures import small_config
from cocu_core.stages.download import download_stage
from cocu_core.toyworld import write_url_list

class Slow(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        time.sleep(0.15)  # slow enough that the parent can kill us mid-way, also on a loaded machine
        super().do_GET()

if __name__ == "__main__":
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory={src!r}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % httpd.server_address[1]
    table = pq.read_table({table!r})
    write_url_list(table, base, {urls!r})
    cfg = small_config({run!r}, data={{"shard_size": 40, "processes": 2, "threads": 2}})
    download_stage({urls!r}, {out!r}, cfg, base_url=base, progress=False)
    print("FINISHED")
'''


def _read_cmdline(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow  # kills or trains real processes (tens of seconds): CI runs it, make test-fast does not
def test_sigkill_mid_download_then_resume_exact_samples(world_dir, tmp_path):
    src, table = faulty_source(world_dir, tmp_path / "src")
    pq.write_table(table, tmp_path / "pairs.parquet")
    run, out = tmp_path / "run", tmp_path / "run" / "download"
    shards = out / "shards"
    script = tmp_path / "child.py"
    script.write_text(KILL_CHILD.format(tests=str(Path(__file__).parent), src=str(src), table=str(tmp_path / "pairs.parquet"),
                                        urls=str(tmp_path / "urls.parquet"), run=str(run), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "done_shards.json").is_file():
        time.sleep(0.01)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # only the stage process: its img2dataset tree must die with it
    proc.wait()
    done_at_kill = {p.name.split("_")[0] for p in shards.glob("*_stats.json")}
    n_shards = -(-(table.num_rows - 1) // 40)
    assert 1 <= len(done_at_kill) < n_shards
    assert any(not (shards / f"{t.stem}_stats.json").exists() for t in shards.glob("*.tar")), "no half-written shard"
    time.sleep(2.0)
    # the img2dataset runner died with the stage (PDEATHSIG); in the milliseconds that takes, a worker may still
    # mark a shard done whose downloads all failed because the server died with us: the journal ignores those
    spec = str(out / "img2dataset_spec.json")
    assert not [c for c in Path("/proc").glob("[0-9]*/cmdline") if spec in _read_cmdline(c)], "runner outlived the stage"
    journal = set(json.loads((out / "done_shards.json").read_text())["shards"]) if (out / "done_shards.json").is_file() else set()
    assert 1 <= len(journal) and journal <= done_at_kill
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("*.tar") if p.stem in journal}

    cfg = small_config(run, data={"shard_size": 40, "processes": 2, "threads": 2})
    with serve_directory(src) as srv:
        write_url_list(table, srv.base_url, tmp_path / "urls.parquet")
        rep = download_stage(tmp_path / "urls.parquet", out, cfg, base_url=srv.base_url, progress=False)
    assert rep["shards_resumed"] == len(journal) and not rep["cached"]
    written = tar_samples(shards)
    ids = [s["sample_id"] for s in written]
    assert len(ids) == len(set(ids)), "duplicated samples"
    assert set(ids) == expected_ids(table)
    assert rep["success"] == len(ids) == table.num_rows - 3
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("*.tar") if p.name in finished} == finished
