"""Bad input at scale: a truncated embedding part, a part whose rows disagree with its metadata, assembled arrays cut
short, an index of another encoder. Each is one clear error naming the file, and nothing half-written is left
(no assembled arrays, no archive)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_scale import CLIP_MODEL, ENCODER_FP, small_run  # noqa: E402

from cocu_core.stages.curate import curate_shard_stage, curation_upstream_fp  # noqa: E402
from cocu_core.curation.data import load_curation_data
from cocu_core.embeddings.store import EmbeddingFileError  # noqa: E402
from cocu_core.stages.embed import embed_stage
from cocu_core.index import IndexMismatchError, load_index  # noqa: E402
from cocu_core.stages.index import index_stage

N, SHARD = 480, 160


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _no_outputs(embed_dir: Path) -> None:
    names = _written(embed_dir)
    assert names == ["parts"], names  # no arrays, metadata, manifest or temporary file beside the parts


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("good")
    cfg, emb = small_run(root, N, SHARD)
    return root, cfg, emb


def test_truncated_part_is_named_and_nothing_is_assembled(tmp_path):
    cfg, _ = small_run(tmp_path, N, SHARD, stages=())
    bad = tmp_path / "embed" / "parts" / "00001" / "img_emb" / "img_emb_0.npy"
    bad.write_bytes(bad.read_bytes()[:-1000])
    with pytest.raises(EmbeddingFileError, match=f"{bad}.*truncated"):
        embed_stage(tmp_path / "download", tmp_path / "embed", cfg, CLIP_MODEL, ENCODER_FP, progress=False)
    _no_outputs(tmp_path / "embed")


def test_part_rows_disagreeing_with_metadata_are_named_and_nothing_is_assembled(tmp_path):
    cfg, _ = small_run(tmp_path, N, SHARD, stages=())
    meta = tmp_path / "embed" / "parts" / "00002" / "metadata" / "metadata_0.parquet"
    t = pq.read_table(meta)
    pq.write_table(t.slice(0, t.num_rows - 3), meta)
    with pytest.raises(EmbeddingFileError, match=f"shard 00002 is misaligned: .*img_emb_0.npy has {SHARD} rows, "
                                                 f"{meta} has {SHARD - 3}"):
        embed_stage(tmp_path / "download", tmp_path / "embed", cfg, CLIP_MODEL, ENCODER_FP, progress=False)
    _no_outputs(tmp_path / "embed")


def test_a_part_of_another_encoder_width_is_refused(tmp_path):
    cfg, _ = small_run(tmp_path, N, SHARD, stages=())
    part = tmp_path / "embed" / "parts" / "00000"
    for sub in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy"):
        np.save(part / sub, np.load(part / sub)[:, :256])
    with pytest.raises(EmbeddingFileError, match="different embedding widths \\[256, 512\\]"):
        embed_stage(tmp_path / "download", tmp_path / "embed", cfg, CLIP_MODEL, ENCODER_FP, progress=False)
    _no_outputs(tmp_path / "embed")


def test_truncated_assembled_embeddings_are_refused_by_index_and_curation(good, tmp_path):
    root, cfg, emb = good
    work = tmp_path / "run"
    shutil.copytree(root, work, symlinks=True)
    cfg = cfg.model_copy(update={"workdir": str(work)})
    bad = work / "embed" / "img_emb.npy"
    bad.write_bytes(bad.read_bytes()[:-4096])
    shutil.rmtree(work / "index")
    with pytest.raises(EmbeddingFileError, match=f"{bad} is truncated"):
        index_stage(work / "embed", work / "index", cfg)
    assert not list((work / "index").glob("*.index")) and not (work / "index" / "manifest.json").exists()
    shutil.rmtree(work / "curation_inputs", ignore_errors=True)
    with pytest.raises(EmbeddingFileError, match=f"{bad} is truncated"):
        load_curation_data(work / "embed", work / "vocabulary", emb, cfg.curation.max_ngram)
    assert not [p for p in (work / "curation_inputs").rglob("*") if p.is_file()]


def test_metadata_shorter_than_the_arrays_is_refused(good, tmp_path):
    root, cfg, emb = good
    work = tmp_path / "run"
    shutil.copytree(root, work, symlinks=True)
    meta = work / "embed" / "metadata.parquet"
    pq.write_table(pq.read_table(meta).slice(0, N - 1), meta)
    with pytest.raises(EmbeddingFileError, match=f"img_emb.npy has {N} rows but {meta} has {N - 1}"):
        load_curation_data(work / "embed", work / "vocabulary", emb, cfg.curation.max_ngram)


def test_index_of_another_encoder_is_refused_before_any_archive(good, tmp_path):
    import faiss

    root, cfg, emb = good
    other = tmp_path / "other"  # the same corpus embedded by another encoder: same size and width
    small_run(other, N, SHARD, stages=("embed", "index"), encoder_fp="synthetic-clip-OTHER")
    work = tmp_path / "run"
    shutil.copytree(root, work, symlinks=True)
    shutil.rmtree(work / "index")
    shutil.copytree(other / "index", work / "index")
    cfg = cfg.model_copy(update={"workdir": str(work)})
    out = work / "curate" / "cocu"
    with pytest.raises(IndexMismatchError, match=f"{work / 'index' / 'image.index'} was built over other embeddings"):
        curation_upstream_fp(cfg, ENCODER_FP)
    with pytest.raises(IndexMismatchError, match="built over other embeddings"):
        load_index(work / "index", "image", embed_dir=work / "embed")
    data = load_curation_data(work / "embed", work / "vocabulary", emb, cfg.curation.max_ngram)
    narrow = faiss.IndexFlatIP(256)  # an index of another encoder's width handed to a shard task directly
    narrow.add(np.ascontiguousarray(np.array(data.img_emb)[:, :256]))
    with pytest.raises(IndexMismatchError, match="the image index holds 480 vectors of width 256"):
        curate_shard_stage(data, "00000", out, cfg, "upstream", ENCODER_FP, narrow, None)
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_nan_embedding_is_refused_by_key_for_the_variants_that_read_it(good, tmp_path):
    root, cfg, emb = good
    work = tmp_path / "run"
    shutil.copytree(root, work, symlinks=True)
    shutil.rmtree(work / "curation_inputs", ignore_errors=True)
    txt = np.load(work / "embed" / "text_emb.npy", mmap_mode="r+")
    txt[5] = np.nan
    txt.flush()
    del txt
    data = load_curation_data(work / "embed", work / "vocabulary", emb, cfg.curation.max_ngram)
    key5 = data.key_array[5].as_py()
    index = load_index(work / "index", "image")
    caption_index = load_index(work / "index", "caption")
    v1 = cfg.model_copy(update={"curation": cfg.curation.model_copy(update={"variant": "v1"})})
    with pytest.raises(ValueError, match=f"NaN, infinite or zero caption embedding for sample\\(s\\) '{key5}'"):
        curate_shard_stage(data, "00001", work / "curate" / "v1", v1, "up", ENCODER_FP, index, caption_index)
    assert not (work / "curate" / "v1").exists()
    rep = curate_shard_stage(data, "00001", work / "curate" / "cocu", cfg, "up", ENCODER_FP, index, None)
    assert rep["images"] == SHARD  # vision-driven expansion never reads caption embeddings
