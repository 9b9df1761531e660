"""The embedding loop's pure parts: tar indexing as webdataset groups samples, batches that never cross a shard,
disjoint shard lists for several embedding processes."""

from __future__ import annotations

import io
import tarfile

from cocu_core.embeddings.loop import index_tar, shard_batches, split_shards


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_index_tar_keeps_complete_samples_in_stored_order(tmp_path):
    _tar(tmp_path / "a.tar", [("__index__", b"x"), ("002.jpg", b"J2"), ("002.txt", b"T2"), ("002.json", b"{}"),
                              ("001.JPG", b"J1"), ("001.txt", b"T1"), ("001.json", b"{}"),
                              ("003.jpg", b"J3"), ("003.txt", b"T3")])  # 003 has no json: clip-retrieval drops it
    samples = index_tar(tmp_path / "a.tar", 4)
    assert [s.key for s in samples] == ["002", "001"] and {s.shard for s in samples} == {4}
    with open(tmp_path / "a.tar", "rb") as f:
        ext, off, size = samples[1].members[0]
        f.seek(off)
        assert (ext, f.read(size)) == ("jpg", b"J1")


def test_batches_stay_inside_their_shard(tmp_path):
    from cocu_core.embeddings.loop import Sample

    samples = [Sample(0, f"{i}", ()) for i in range(5)] + [Sample(2, f"x{i}", ()) for i in range(3)]
    plan = shard_batches(samples, 3, 2)
    assert plan == [(0, [0, 1]), (0, [2, 3]), (0, [4]), (2, [5, 6]), (2, [7])]


def test_split_shards_is_disjoint_and_complete():
    names = [f"{i:05d}" for i in range(7)]
    groups = split_shards(names, 3)
    assert sorted(sum(groups, [])) == names and len(groups) == 3
    assert split_shards(names[:1], 4) == [["00000"]]
