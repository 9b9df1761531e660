"""Data on object storage (issue 25, first part): url lists read from a bucket and archive versions published to one,
against a real S3 API on loopback (moto's server mode, bound to 127.0.0.1) through s3fs.

  - a url-list folder in a bucket reads as the same folder on disk, and a toy curation from it equals a local one's
    archives row for row;
  - a bucket that does not exist, missing credentials, a scheme with no filesystem: one line naming the location;
  - archive versions on the store are trusted only when their version.json (written last) names them and every
    object matches its checksum; a publish killed with SIGKILL mid-upload leaves no trusted version, and the rerun
    finishes it; a fresh folder fetches a version from the bucket alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import small_config
from cocu_core.toyworld import read_pairs

ROOT = Path(__file__).resolve().parent.parent
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
         "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


@pytest.fixture(scope="module")
def s3():
    """Why: a real S3 API (moto server) on 127.0.0.1, test credentials in the environment, one bucket."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in CREDS}
    os.environ.update(CREDS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"s3": {"endpoint_url": f"http://{host}:{port}"}}
    from cocu_core.storage import filesystem

    filesystem("s3://cocu", opts)[0].mkdir("cocu")
    yield opts
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _upload(local: Path, url: str, opts) -> None:
    from cocu_core.storage import join, put_file

    for p in sorted(local.iterdir()):
        put_file(p, join(url, p.name), opts)


def _lists(world_dir: Path, folder: Path, n: int = 80) -> None:
    pairs = read_pairs(world_dir / "train").to_pylist()[:n]
    rows = [{"url": (world_dir / "train" / p["file"]).as_uri(), "caption": p["caption"], "key": p["key"]} for p in pairs]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows[: n // 2]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[n // 2:]), folder / "b.parquet")


def test_a_url_list_folder_in_a_bucket_reads_as_the_same_folder_on_disk(s3, world_dir, tmp_path):
    from cocu_core.data.pairs import list_columns, list_files, read_pair_list

    _lists(world_dir, tmp_path / "lists")
    _upload(tmp_path / "lists", "s3://cocu/lists", s3)
    remote = read_pair_list("s3://cocu/lists", options=s3)
    local = read_pair_list(tmp_path / "lists")
    assert remote.num_rows == 80 and remote.equals(local)
    assert remote.column("sample_id")[0].as_py().startswith("a/")
    one = read_pair_list("s3://cocu/lists/b.parquet", options=s3)
    assert one.equals(read_pair_list(tmp_path / "lists" / "b.parquet"))
    assert list_files("s3://cocu/lists", "parquet", s3) == (["s3://cocu/lists/a.parquet", "s3://cocu/lists/b.parquet"], True)
    assert list_columns("s3://cocu/lists/a.parquet", "parquet", s3) == ["url", "caption", "key"]


def test_bad_locations_stop_with_one_line_naming_them(s3, tmp_path):
    from cocu_core.data.pairs import read_pair_list
    from cocu_core.storage import StorageError

    with pytest.raises(StorageError) as e:
        read_pair_list("s3://no-such-bucket/list.parquet", options=s3)
    assert str(e.value) == "the bucket of s3://no-such-bucket/list.parquet does not exist"
    with pytest.raises(FileNotFoundError, match="data.url_list not found: s3://cocu/none.parquet"):
        read_pair_list("s3://cocu/none.parquet", options=s3)
    with pytest.raises(StorageError) as e:
        read_pair_list("nosuchfs://bucket/list.parquet", options=s3)
    assert str(e.value).startswith("no filesystem for 'nosuchfs://' locations is installed")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    code = ("import sys; from cocu_core.data.pairs import read_pair_list\n"
            f"read_pair_list('s3://cocu/lists', options={{'s3': {dict(s3['s3'])!r}}})")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "StorageError: no credentials for s3://cocu/lists" in r.stderr
    # on the command line: one line, exit code 2, before any stage runs
    cfg = small_config(tmp_path / "run", data={"source": "url_list", "url_list": "s3://no-such-bucket/lists"},
                       storage={"options": s3})
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    r = subprocess.run([sys.executable, "-m", "flows.cli", "status", "-c", str(tmp_path / "c.yaml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("the bucket of s3://no-such-bucket/lists does not exist")
    assert "Traceback" not in r.stderr


def _versions(tmp_path: Path, n_files: int = 3, n_versions: int = 2) -> Path:
    """Why: real archive files (the archive schema) published as local versions."""
    from cocu_core.curation.archive import ARCHIVE_SCHEMA, write_archive
    from cocu_core.versions import publish_version

    work, root = tmp_path / "curate", tmp_path / "archives" / "cocu"
    rng = np.random.default_rng(0)
    for v in range(n_versions):
        for i in range(n_files):
            keys = [f"{i:05d}{j:04d}" for j in range(20)]
            t = pa.table({"key": keys, "caption": ["a cat"] * 20, "caption_concept_ids": [[0]] * 20,
                          "concept_ids": [[0, int(rng.integers(1, 9))] for _ in keys], "concepts": [["cat", "dog"]] * 20,
                          "naive_scores": [[0.5, 0.25]] * 20, "t2v_scores": [[0.5, float(v)]] * 20,
                          "cluster_ids": [[0, 1]] * 20, "neighbour_keys": [[keys[0]]] * 20}, schema=ARCHIVE_SCHEMA)
            write_archive(work / f"archive_{i:05d}.parquet", t)
        publish_version(work, root, keep=5)
    return root


def test_archive_versions_on_the_store_are_trusted_only_when_named_and_whole(s3, tmp_path):
    from cocu_core.curation import ArchiveReader
    from cocu_core.storage import filesystem
    from cocu_core.versions import (VersionIntegrityError, fetch_version, remote_versions, sync_remote_versions,
                                    version_dir)

    root = _versions(tmp_path)
    remote = "s3://cocu/t1/archives/cocu"
    assert remote_versions(remote, s3) == []
    assert sync_remote_versions(root, remote, keep=5, options=s3) == {"written": [1, 2], "pruned": []}
    assert remote_versions(remote, s3) == [1, 2]
    assert sync_remote_versions(root, remote, keep=5, options=s3)["written"] == []  # nothing left to write
    got = fetch_version(remote, 2, tmp_path / "elsewhere" / "v0002", s3)
    assert ArchiveReader(got).table.equals(ArchiveReader(version_dir(root, 2)).table)
    fs = filesystem(remote, s3)[0]
    # objects no version.json names (a killed publish's) are not a version
    fs.pipe_file("cocu/t1/archives/cocu/v0003/archive_00000.parquet", b"partial")
    assert remote_versions(remote, s3) == [1, 2]
    # an object whose bytes differ from its recorded checksum: the fetch refuses, and leaves nothing in place
    fs.pipe_file("cocu/t1/archives/cocu/v0001/archive_00001.parquet", b"not the archive")
    with pytest.raises(VersionIntegrityError, match="archive_00001.parquet does not match its version.json"):
        fetch_version(remote, 1, tmp_path / "elsewhere" / "v0001", s3)
    assert not (tmp_path / "elsewhere" / "v0001").exists()
    # older versions beyond `keep` go, version.json first
    assert sync_remote_versions(root, remote, keep=1, options=s3)["pruned"] == [1]
    assert remote_versions(remote, s3) == [2] and not fs.exists("cocu/t1/archives/cocu/v0001/archive_00000.parquet")


KILLED_PUBLISH = r'''
import sys, time
from pathlib import Path
import cocu_core.storage as storage
import cocu_core.versions as versions
put = storage.put_file
def slow_put(local, location, options=None):  # a slow link: one object every 0.3 s
    put(local, location, options); print("put", location, flush=True); time.sleep(0.3)
storage.put_file = slow_put
versions.sync_remote_versions(Path(sys.argv[1]), sys.argv[2], 5, eval(sys.argv[3]))
'''


def test_a_publish_killed_mid_upload_leaves_no_trusted_version_and_the_rerun_finishes(s3, tmp_path):
    from cocu_core.curation import ArchiveReader
    from cocu_core.versions import fetch_version, remote_versions, sync_remote_versions, version_dir

    root = _versions(tmp_path, n_files=6, n_versions=1)
    remote = "s3://cocu/t2/archives/cocu"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISH, str(root), remote, repr(s3)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    puts = [proc.stdout.readline() for _ in range(2)]  # two of the six archive objects are up
    assert all(p.startswith("put s3://cocu/t2/archives/cocu/v0001/archive_") for p in puts), puts
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert remote_versions(remote, s3) == []  # objects are there, no version.json names them
    assert sync_remote_versions(root, remote, keep=5, options=s3)["written"] == [1]
    got = fetch_version(remote, 1, tmp_path / "second-machine" / "v0001", s3)
    assert ArchiveReader(got).table.equals(ArchiveReader(version_dir(root, 1)).table)


@pytest.mark.slow
def test_a_toy_curation_from_a_bucket_list_equals_a_local_one_and_publishes_there(s3, world_dir, toy_encoder_weights,
                                                                                  tmp_path):
    import shutil

    from cocu_core.stages import get
    from cocu_core.stages.base import Context
    from cocu_core.versions import fetch_version, publish_version, remote_versions, sync_remote_versions

    _lists(world_dir, tmp_path / "lists", n=40)  # one download shard of 40 from two list files
    _upload(tmp_path / "lists", "s3://cocu/t3/lists", s3)
    names = ("download", "encoder", "embed", "index", "vocabulary", "concepts", "curate")
    tables = {}
    for where, url_list in (("bucket", "s3://cocu/t3/lists"), ("local", str(tmp_path / "lists"))):
        cfg = small_config(tmp_path / where, name=where, data={"source": "url_list", "url_list": url_list, "shard_size": 40},
                           encoder={"pretrained": str(toy_encoder_weights), "train_toy": False},
                           eval={"class_names": str(world_dir / "val" / "class_names.txt")}, storage={"options": s3})
        ctx = Context(cfg, log=lambda m: None, progress=False)
        reports = {n: get(n).run(ctx) for n in names}
        assert reports["download"]["success"] == 40
        folder = cfg.workpath / "curate" / "cocu"
        t = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("archive_*.parquet"))])
        tables[where] = t
        if where == "bucket":
            root = cfg.workpath / "archives" / "cocu"
            publish_version(folder, root, keep=2)
            sync_remote_versions(root, "s3://cocu/t3/archives/cocu", 2, s3)
    assert tables["bucket"].num_rows == 40 and tables["bucket"].equals(tables["local"])
    assert remote_versions("s3://cocu/t3/archives/cocu", s3) == [1]
    fresh = tmp_path / "another-machine"
    fetched = fetch_version("s3://cocu/t3/archives/cocu", 1, fresh / "v0001", s3)
    t = pa.concat_tables([pq.read_table(p) for p in sorted(fetched.glob("archive_*.parquet"))])
    assert t.equals(tables["local"])
    shutil.rmtree(fresh)
