"""Thread policy: tasks running side by side get cores // concurrency threads each (torch, OpenMP, BLAS),
set in the task's own thread and inherited by the stage subprocesses it starts."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from cocu_core.proc import tree_env
from cocu_core.runtime import current_threads, limit_threads, resolve_concurrency, resolve_threads


def test_policy_numbers():
    assert resolve_concurrency(0, cores=2) == 2 and resolve_concurrency(3, cores=2) == 3
    assert resolve_threads(0, concurrency=2, cores=2) == 1
    assert resolve_threads(0, concurrency=1, cores=2) == 2
    assert resolve_threads(0, concurrency=3, cores=2) == 1  # never below one
    assert resolve_threads(0, concurrency=2, cores=16) == 8
    assert resolve_threads(4, concurrency=8, cores=2) == 4  # an explicit count is taken as given


def test_limit_threads_applies_in_each_task_thread_and_restores():
    before = torch.get_num_threads()
    seen: dict[int, tuple] = {}
    barrier = threading.Barrier(2)

    def task(i: int, n: int) -> None:
        with limit_threads(n):
            barrier.wait(timeout=30)  # both tasks inside their limits at the same time
            import faiss
            from threadpoolctl import threadpool_info

            blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
            seen[i] = (torch.get_num_threads(), faiss.omp_get_max_threads(), current_threads(),
                       tree_env(threads=current_threads())["OMP_NUM_THREADS"], max(blas) if blas else None)
            barrier.wait(timeout=30)
        seen[i] = seen[i] + (current_threads(),)

    # two different limits at once, neither the caller's count nor 1: "applies n per thread" is then not
    # "always 1" nor "one global setting"
    limits = {0: 2, 1: 3}
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(task, [0, 1], [limits[0], limits[1]]))
    for i, n in limits.items():
        torch_n, faiss_n, local, env_n, _, after = seen[i]
        assert (torch_n, faiss_n, local, env_n) == (n, n, n, str(n)) and after is None
    # OpenBLAS's count is one per process (threadpoolctl sets it globally, the last task wins), so it is checked
    # with one task alone; side by side tasks all get the same n from the policy, so that is enough
    from threadpoolctl import threadpool_info

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    blas_before = blas()
    with limit_threads(3):  # numpy's OpenBLAS takes 3; faiss's bundled one is built single-threaded (stays 1)
        assert max(blas()) == 3 and all(b <= 3 for b in blas())
    assert blas() == blas_before
    assert torch.get_num_threads() == before  # the caller's own thread never changed
