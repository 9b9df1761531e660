"""The persistent embedding loop: decode workers, several embedding processes and clip-retrieval's own output agree
byte for byte; a kill -9 mid-run leaves no process and the resumed run writes the bytes of an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ingest_fixtures import small_config
from proc_fixtures import kill_marked, marked_processes, processes_mentioning, wait_all_gone, wait_until

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OUTPUTS = ("img_emb.npy", "text_emb.npy", "metadata.parquet")

pytestmark = pytest.mark.slow
# One CPU thread in every embedding process: CPU kernels may split a matrix product differently with another thread
# count (seen on a CI machine: the reference's threads against two processes' half as many each, last bits apart), and
# what these tests pin is the loop's arrangement (workers, processes, resume), not the BLAS library's threading.
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_process():
    """Why: the embedding processes (children of this one) all run with one thread, whatever the machine."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def shards(world_dir, tmp_path_factory):
    """Why: 240 real toy pairs downloaded once into 6 shards of 40, and a random-weight cocu-tiny (same compute as a
    trained one) saved as the encoder's weights."""
    import torch

    from cocu_core.compat import ensure_torchvision
    from cocu_core.encoder.load import model_config_paths
    from cocu_core.stages.download import download_stage
    from cocu_core.toyworld import read_pairs, serve_directory, write_url_list

    ensure_torchvision()
    import open_clip

    root = tmp_path_factory.mktemp("embed_loop")
    cfg = small_config(root / "base", data={"shard_size": 40})
    model_config_paths(cfg)  # registers cocu-tiny
    torch.manual_seed(0)
    weights = root / "tiny.pt"
    torch.save(open_clip.create_model("cocu-tiny").state_dict(), weights)
    with serve_directory(world_dir / "train") as srv:
        write_url_list(read_pairs(world_dir / "train"), srv.base_url, root / "urls.parquet")
        dl = download_stage(root / "urls.parquet", cfg.workpath / "download", cfg, base_url=srv.base_url, progress=False)
    assert dl["n_shards"] == 6
    return root, weights


def _cfg(root: Path, name: str, weights: Path, **encoder):
    """Why: a run folder with the shared download copied in (same generation key, so the same part keys)."""
    cfg = small_config(root / name, data={"shard_size": 40},
                       encoder={"pretrained": str(weights), "inference_batch_size": 16, **encoder})
    if not (cfg.workpath / "download").exists():
        shutil.copytree(root / "base" / "download", cfg.workpath / "download")
    return cfg


def _embed(cfg) -> dict:
    from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, model_config_paths, resolve_weights
    from cocu_core.stages.embed import embed_stage

    arch, ckpt = resolve_weights(cfg)
    return embed_stage(cfg.workpath / "download", cfg.workpath / "embed", cfg, clip_model_string(arch, ckpt),
                       encoder_fingerprint(cfg), model_config_paths(cfg), progress=False)


def _bytes(cfg) -> dict[str, bytes]:
    """Why: every file the later stages read, and every shard's part, as bytes."""
    out = cfg.workpath / "embed"
    files = {f: (out / f).read_bytes() for f in OUTPUTS}
    for p in sorted((out / "parts").rglob("*")):
        if p.is_file():
            files[str(p.relative_to(out))] = p.read_bytes()
    return files


@pytest.fixture(scope="module")
def reference(shards):
    """Why: the uninterrupted run every other arrangement must reproduce: no decode worker, one process."""
    root, weights = shards
    cfg = _cfg(root, "ref", weights, num_workers=0, embed_processes=1)
    rep = _embed(cfg)
    assert rep["embedded"] == 240 and rep["shards_embedded"] == 6 and rep["decode_workers_used"] == 0
    return _bytes(cfg)


def test_several_decode_workers_are_used_and_change_no_byte(shards, reference):
    root, weights = shards
    cfg = _cfg(root, "workers", weights, num_workers=3, embed_processes=1)
    rep = _embed(cfg)
    assert rep["decode_workers_used"] == 3  # 15 batches of 16 spread over the three workers
    got = _bytes(cfg)
    assert got.keys() == reference.keys() and all(got[k] == reference[k] for k in reference)


def test_two_embedding_processes_over_disjoint_shards_change_no_byte(shards, reference):
    root, weights = shards
    cfg = _cfg(root, "procs", weights, num_workers=1, embed_processes=2)
    rep = _embed(cfg)
    assert rep["embed_processes"] == 2 and rep["decode_workers_used"] == 2
    got = _bytes(cfg)
    assert got.keys() == reference.keys() and all(got[k] == reference[k] for k in reference)




def test_parts_equal_clip_retrieval_inference_called_directly(shards, reference, tmp_path):
    """Why: our loop must embed exactly as clip-retrieval's own path does (same batches, same bytes)."""
    from cocu_core.encoder.load import clip_model_string, model_config_paths, resolve_weights

    root, weights = shards
    cfg = _cfg(root, "ref", weights)
    arch, ckpt = resolve_weights(cfg)
    out = tmp_path / "direct"
    spec = {"input_dataset": str(cfg.workpath / "download" / "shards" / "00002.tar"), "output_folder": str(out),
            "input_format": "webdataset", "enable_text": True, "enable_image": True, "enable_metadata": True,
            "batch_size": 16, "num_prepro_workers": 1, "clip_model": clip_model_string(arch, ckpt), "use_jit": False,
            "output_partition_count": 1, "enable_wandb": False, "model_configs": [str(p) for p in model_config_paths(cfg)]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "cocu_core.embeddings.direct", str(tmp_path / "spec.json")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for sub in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy"):
        assert (out / sub).read_bytes() == reference[f"parts/00002/{sub}"]
    ours = pq.read_table(cfg.workpath / "embed" / "parts" / "00002" / "metadata" / "metadata_0.parquet")
    assert ours.equals(pq.read_table(out / "metadata" / "metadata_0.parquet"))
    # the scale benchmarks' synthetic parts (benchmarks/bench_scale.py) have the layout clip-retrieval writes: the same
    # data files (arrays and metadata; its stats/ are not read), array dtypes and ranks, and metadata columns each as clip-retrieval
    # types it (the synthetic part has fewer: none of img2dataset's status, size or hash columns)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_scale import World, write_part

    write_part(tmp_path / "synthetic", World(0), 2, 8, 40, "key")
    syn = tmp_path / "synthetic" / "00002"
    def data_files(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.suffix in (".npy", ".parquet"))

    assert data_files(syn) == data_files(out) == ["img_emb/img_emb_0.npy", "metadata/metadata_0.parquet",
                                                  "text_emb/text_emb_0.npy"]
    for sub in ("img_emb/img_emb_0.npy", "text_emb/text_emb_0.npy"):
        a, b = np.load(out / sub), np.load(syn / sub)
        assert (a.dtype, a.ndim) == (b.dtype, b.ndim), sub
    real_meta = pq.read_schema(out / "metadata" / "metadata_0.parquet")
    syn_meta = pq.read_schema(syn / "metadata" / "metadata_0.parquet")
    assert {(f.name, f.type) for f in syn_meta} <= {(f.name, f.type) for f in real_meta}  # each with its real type


EMBED = r'''
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from ingest_fixtures import small_config
from cocu_core.stages.embed import embed_stage
from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, model_config_paths, resolve_weights

if __name__ == "__main__":
    cfg = small_config(Path({run!r}), data={{"shard_size": 40}},
                       encoder={{"pretrained": {weights!r}, "inference_batch_size": 16, "num_workers": 2}})
    arch, ckpt = resolve_weights(cfg)
    embed_stage(cfg.workpath / "download", cfg.workpath / "embed", cfg, clip_model_string(arch, ckpt),
                encoder_fingerprint(cfg), model_config_paths(cfg), progress=False)
'''


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_bytes(shards, reference):
    root, weights = shards
    cfg = _cfg(root, "killed", weights, num_workers=2)
    parts = cfg.workpath / "embed" / "parts"
    mark = uuid.uuid4().hex
    code = EMBED.format(tests=str(TESTS), run=str(cfg.workpath), weights=str(weights))
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "COCU_TEST_MARK": mark}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finished = wait_until(lambda: proc.poll() is not None or len(list(parts.glob("*/done.json"))) >= 1,
                              timeout=300, every=0.02)
        procs = marked_processes(mark)
        assert finished and proc.poll() is None, proc.stdout.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)  # the stage process alone: its tree must follow it
        proc.wait()
        done_before = len(list(parts.glob("*/done.json")))
        assert 1 <= done_before < 6, done_before  # killed mid-run: some shards finished, not all
        assert sum("cocu_core.embeddings._runner" in c for c in procs.values()) >= 3  # the runner and its 2 workers
        assert wait_all_gone(mark) == {}
        assert processes_mentioning(str(cfg.workpath)) == {}
        assert not (cfg.workpath / "embed" / "manifest.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_marked(mark)
    rep = _embed(cfg)
    assert rep["shards_reused"] == done_before and rep["shards_embedded"] == 6 - done_before
    got = _bytes(cfg)
    assert sorted(got) == sorted(reference) and all(got[k] == reference[k] for k in reference)
    assert not list(parts.glob(".*.tmp"))  # the killed run's half-written part is gone
    img = np.load(cfg.workpath / "embed" / "img_emb.npy")
    assert img.shape == (240, 64)
