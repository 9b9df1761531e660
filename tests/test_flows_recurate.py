"""Incremental re-curation (`cocu_recurate`) on a growing pair list (slow: real Prefect flows and tools).

The list is a folder of Parquet files with file:// URLs into a small toy world. Three runs:
  1. 120 pairs: everything is new, archives version 1;
  2. 40 rows appended to the same file: exactly 40 new pairs, only the new shard is downloaded and
     embedded (old shard files untouched), every shard re-curated, version 2; version 1 still readable;
  3. a new file of 80 pairs in the folder: exactly 80 new pairs, version 3, version 1 pruned
     (`runtime.keep_versions: 2`); the summary artifact says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ingest_fixtures import small_config, status_states
from cocu_core.toyworld import read_pairs

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

RUN = r'''
import json, sys
from flows.recurate import cocu_recurate
r = cocu_recurate(config_path=sys.argv[1])
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
with get_client(sync_client=True) as c:
    arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rc-recurate-summary"])))
summary = sorted(arts, key=lambda a: a.created)[-1].data if arts else ""
keep = ("new_pairs", "new_success", "success", "n_shards", "cached")
print("RESULT " + json.dumps({"recurate": r["recurate"], "download": {k: r["download"].get(k) for k in keep},
                              "embed": {k: r["embed"].get(k) for k in ("shards_embedded", "shards_reused", "embedded")},
                              "curate": r["curate"], "archives": r["archives"], "summary_md": summary}, default=str))
'''


def _list(rows: list[dict], path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture(scope="module")
def setup(world_dir, toy_encoder_weights, tmp_path_factory):
    """Why: a url-list folder over the toy train split, a trained toy encoder given as weights, one Prefect home."""
    tmp = tmp_path_factory.mktemp("recurate")
    pairs = read_pairs(world_dir / "train").to_pylist()
    rows = [{"url": (world_dir / "train" / p["file"]).as_uri(), "caption": p["caption"], "key": p["key"]} for p in pairs]
    (tmp / "lists").mkdir()
    cfg = small_config(tmp / "run", name="rc",
                       data={"source": "url_list", "url_list": str(tmp / "lists"), "shard_size": 40},
                       encoder={"pretrained": str(toy_encoder_weights), "train_toy": False},
                       eval={"class_names": str(world_dir / "val" / "class_names.txt")},
                       runtime={"keep_versions": 2})
    path = tmp / "rc.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return {"tmp": tmp, "rows": rows, "cfg": cfg, "path": path,
            "env": {**os.environ, "PREFECT_HOME": str(tmp / "prefect")}}


def _recurate(setup) -> dict:
    r = subprocess.run([sys.executable, "-c", RUN, str(setup["path"])], cwd=ROOT, env=setup["env"], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def _shard_stamps(setup) -> dict[str, tuple[int, int]]:
    shards = setup["cfg"].workpath / "download" / "shards"
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.iterdir()}


def _file_hashes(folder: Path) -> dict[str, str]:
    """Why: an archive version is frozen once written: its files' bytes, not just its key set."""
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_growing_list_downloads_and_embeds_only_new_pairs_and_versions_archives(setup):
    from cocu_core.curation import ArchiveReader
    from cocu_core.embeddings.store import load_embeddings
    from cocu_core.versions import list_versions, version_dir, versions_root

    rows, lists, w = setup["rows"], setup["tmp"] / "lists", setup["cfg"].workpath
    root = versions_root(w, "cocu")
    _list(rows[:120], lists / "a.parquet")
    first = _recurate(setup)
    assert first["download"]["new_pairs"] == 120 and first["download"]["n_shards"] == 3
    assert first["archives"]["version"] == 1 and first["archives"]["new_version"]
    v1_keys = set(ArchiveReader(version_dir(root, 1)).table.column("key").to_pylist())
    assert len(v1_keys) == 120
    v1_files = _file_hashes(version_dir(root, 1))
    v1_rows = ArchiveReader(version_dir(root, 1)).table.to_pylist()

    stamps = _shard_stamps(setup)
    _list(rows[:160], lists / "a.parquet")  # rows appended to the same file
    second = _recurate(setup)
    assert second["recurate"]["new pairs in the list"] == 40 and second["download"]["new_success"] == 40
    assert second["download"]["n_shards"] == 4
    assert {k: v for k, v in _shard_stamps(setup).items() if k in stamps} == stamps  # old shards never rewritten
    assert second["embed"]["shards_embedded"] == 1 and second["embed"]["shards_reused"] == 3
    assert second["curate"]["shards"] == 4 and second["curate"]["cached_shards"] == 0  # every shard re-curated
    # ... incrementally: the 40 new rows and the earlier ones that can change recomputed, the others carried over
    cur = second["curate"]
    assert cur["recomputed"] + cur["carried"] == 160 and cur["recomputed"] >= 40
    assert second["recurate"]["archive rows recomputed / carried over"] == f"{cur['recomputed']} / {cur['carried']}"
    assert second["archives"]["version"] == 2 and second["archives"]["previous"] == 1
    changes = second["archives"]["changes"]
    assert changes["old_images"] == 120 and changes["files_new"] == 1
    assert second["recurate"]["old image archives changed"] == f"{changes['old_images_changed']} of 120"
    # the old version is still readable as it was (same bytes, same rows: an in-place rewrite would show); the new
    # one holds old + new pairs
    assert _file_hashes(version_dir(root, 1)) == v1_files
    assert ArchiveReader(version_dir(root, 1)).table.to_pylist() == v1_rows
    _, _, meta = load_embeddings(w / "embed")
    assert meta.num_rows == 160
    assert len(ArchiveReader(version_dir(root, 2))) == 160

    _list(rows[160:], lists / "b.parquet")  # a new list file in the folder
    third = _recurate(setup)
    assert third["recurate"]["new pairs in the list"] == 80 and third["download"]["new_success"] == 80
    assert third["embed"]["shards_embedded"] == 2 and third["embed"]["shards_reused"] == 4
    assert third["archives"]["version"] == 3 and third["archives"]["pruned"] == [1]
    assert list_versions(root) == [2, 3] and len(ArchiveReader(version_dir(root, 3))) == 240
    assert "**80 new pairs**" in third["summary_md"] and "| archive version | 3 |" in third["summary_md"]
    sids = load_embeddings(w / "embed")[2].column("sample_id").to_pylist()
    assert len(set(sids)) == 240 and sum(s.startswith("b/") for s in sids) == 80

    # `cocu status` on a url-list folder: everything done; one more file makes the download stale, and says why
    def status() -> str:
        r = subprocess.run([sys.executable, "-m", "flows.cli", "status", "-c", str(setup["path"])], cwd=ROOT,
                           env=setup["env"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    out = status()
    states = status_states(out)
    assert {s: states[s] for s in ("download", "encoder", "embed", "index", "vocabulary", "concepts", "curate")} == \
        dict.fromkeys(("download", "encoder", "embed", "index", "vocabulary", "concepts", "curate"), "done"), out
    _list(rows[:10], lists / "c.parquet")
    out = status()
    states = status_states(out)
    assert states["download"] == "stale" and states["embed"] == "stale", out
    assert "the url list changed (250 usable pairs now, 240 listed when it ran)" in out
    assert "upstream 'download' is stale" in out
