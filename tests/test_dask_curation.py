"""Sharded curation on existing engines: `curate_shard_stage` submitted to a local Dask cluster (2 worker processes)
and to a local Ray writes archives identical to the in-process runner's; `runtime.task_runner` builds the Prefect
task runner of each engine."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_scale import ENCODER_FP, small_run  # noqa: E402

from cocu_core.config import ConfigError, config_from_dict  # noqa: E402
from cocu_core.stages.curate import curate_shard_stage, curation_upstream_fp
from cocu_core.curation.data import load_curation_data, shard_names
from cocu_core.index import load_index  # noqa: E402

N, SHARD = 960, 160
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sharded")
    cfg, emb = small_run(root, N, SHARD)
    data = load_curation_data(root / "embed", root / "vocabulary", emb, cfg.curation.max_ngram)
    index = load_index(root / "index", "image", embed_dir=root / "embed")
    upstream = curation_upstream_fp(cfg, ENCODER_FP)
    shards = shard_names(data)
    assert len(shards) == N // SHARD
    local = root / "local"
    for s in shards:
        curate_shard_stage(data, s, local, cfg, upstream, ENCODER_FP, index, None)
    return cfg, data, index, upstream, shards, local


@contextlib.contextmanager
def restored_environ():
    """Why: Dask's LocalCluster writes OMP_NUM_THREADS=1 (and MKL/OPENBLAS, PYTHONHASHSEED) into this process's
    environment; every later test's subprocess would inherit single-threaded BLAS (the encoder-report test ran
    348 s instead of 184 s after it)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _same_archives(a: Path, b: Path, shards: list[str]) -> None:
    for s in shards:
        ta, tb = pq.read_table(a / f"archive_{s}.parquet"), pq.read_table(b / f"archive_{s}.parquet")
        assert ta.num_rows == SHARD and ta.equals(tb) and ta.schema.metadata == tb.schema.metadata, s


@pytest.mark.slow  # a local Dask cluster of 2 processes (tens of seconds on 2 cores)
def test_dask_local_cluster_writes_the_local_runners_archives(run, tmp_path):
    from distributed import Client, LocalCluster

    cfg, data, index, upstream, shards, local = run
    out = tmp_path / "dask"
    threads_before = {k: os.environ.get(k) for k in THREADS_ENV}
    with restored_environ(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                          env=THREADS_ENV) as cluster, Client(cluster) as client:
        index_file = cfg.workpath / "index" / "image.index"  # workers memory-map it rather than get a pickled copy
        futures = [client.submit(curate_shard_stage, data, s, out, cfg, upstream, ENCODER_FP, index_file, None,
                                 pure=False) for s in shards]
        reps = client.gather(futures)
        workers = {w for held in client.who_has(futures).values() for w in held}
    assert [r["images"] for r in reps] == [SHARD] * len(shards) and not any(r["cached"] for r in reps)
    assert len(workers) == 2  # both worker processes curated shards
    assert {k: os.environ.get(k) for k in THREADS_ENV} == threads_before  # nothing leaked into later tests
    _same_archives(local, out, shards)


@pytest.mark.slow  # a local Ray (tens of seconds on 2 cores)
def test_ray_local_cluster_writes_the_local_runners_archives(run, tmp_path):
    import ray
    cfg, data, index, upstream, shards, local = run
    out = tmp_path / "ray"
    with restored_environ():  # ray.init sets RAY_* and PYTHONBREAKPOINT in this process
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": THREADS_ENV})
        try:
            remote = ray.remote(num_cpus=1)(curate_shard_stage)
            reps = ray.get([remote.remote(data, s, out, cfg, upstream, ENCODER_FP, index, None)  # a pickled index
                            for s in shards])
        finally:
            ray.shutdown()
    assert [r["images"] for r in reps] == [SHARD] * len(shards)
    _same_archives(local, out, shards)


def test_task_runner_setting_builds_each_engines_prefect_runner(tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner
    from prefect_ray import RayTaskRunner

    from flows.runners import dask_cluster_kwargs, task_runner_for

    def cfg(**runtime):
        return config_from_dict({"workdir": str(tmp_path), "runtime": runtime})

    threads = task_runner_for(cfg(concurrency=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    local = task_runner_for(cfg(task_runner="dask", concurrency=2, threads=3))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True, "env": {
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}}
    # threads 0 = cores // workers: 1 on 2 cores with 2 workers
    assert dask_cluster_kwargs(cfg(task_runner="dask", concurrency=2))["env"]["OMP_NUM_THREADS"] == \
        str(max(1, len(os.sched_getaffinity(0)) // 2))
    remote = task_runner_for(cfg(task_runner="dask", task_runner_address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    ray_runner = task_runner_for(cfg(task_runner="ray", task_runner_address="ray://10.0.0.5:10001"))
    assert isinstance(ray_runner, RayTaskRunner) and ray_runner.address == "ray://10.0.0.5:10001"
    with pytest.raises(ConfigError, match="task_runner_address is set but runtime.task_runner is 'threads'"):
        cfg(task_runner_address="tcp://x:1")
