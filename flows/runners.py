"""The Prefect task runner of a run, from `runtime.task_runner`: local threads, Dask (prefect-dask) or Ray (prefect-ray).

Why: the sharded stages (one curation task per download shard) scale out on existing engines instead of a
home-made scheduler. A flow uses it as `flow.with_options(task_runner=task_runner_for(cfg))` and submits its
shard tasks (`curate_shard_task.submit(...)`); every task's arguments must pickle, which the curation inputs do
(`CurationData` is a handle on files under the work folder, so Dask/Ray workers must see that folder, e.g. on a
shared file system). Dask and Ray are optional dependencies (`pip install -e .[scale]`); asking for one that is
not installed is a one-line error saying so.
"""

from __future__ import annotations

from typing import Any

from cocu_core.config import ConfigError, PipelineConfig
from cocu_core.runtime import available_cores, resolve_concurrency, resolve_threads


def _missing(engine: str, package: str) -> ConfigError:
    return ConfigError(f"runtime.task_runner '{engine}' needs {package}, which is not installed: "
                       f"pip install -e '.[scale]' (or pip install {package})")


def dask_cluster_kwargs(cfg: PipelineConfig) -> dict[str, Any]:
    """Why: a local Dask cluster of `concurrency` worker processes with `threads` threads each, so it uses the
    same share of the cores as the thread pool would; workers inherit the thread policy from the environment."""
    rt = cfg.runtime
    workers = resolve_concurrency(rt.concurrency)
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "env": _thread_env(resolve_threads(rt.threads, workers))}


def _thread_env(threads: int) -> dict[str, str]:
    return {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def task_runner_for(cfg: PipelineConfig) -> Any:
    """Why: one place turns the config into the task runner the flow's fan-out runs on.

    `threads`: Prefect's ThreadPoolTaskRunner with `concurrency` workers. `dask`: prefect-dask's DaskTaskRunner on
    the scheduler at `task_runner_address`, or on a LocalCluster it starts. `ray`: prefect-ray's RayTaskRunner on the
    cluster at `task_runner_address` (`auto`, `ray://host:10001`), or a local Ray limited to this machine's cores."""
    rt = cfg.runtime
    if rt.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=resolve_concurrency(rt.concurrency))
    if rt.task_runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise _missing("dask", "prefect-dask") from None
        if rt.task_runner_address:
            return DaskTaskRunner(address=rt.task_runner_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=dask_cluster_kwargs(cfg))
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise _missing("ray", "prefect-ray") from None
    if rt.task_runner_address:
        return RayTaskRunner(address=rt.task_runner_address)
    return RayTaskRunner(init_kwargs={"num_cpus": available_cores(), "include_dashboard": False,
                                      "runtime_env": {"env_vars": _thread_env(resolve_threads(rt.threads,
                                                                                              resolve_concurrency(rt.concurrency)))}})
