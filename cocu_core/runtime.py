"""Thread policy for stages that run side by side: each gets its share of the cores, never more.

Why: torch, faiss (OpenMP) and OpenBLAS each default to one thread per core; two concurrent tasks
(or a task beside a training job) then oversubscribe a small machine and every step slows down
several-fold. A task runs its compute under :func:`limit_threads` with `cores // concurrent tasks`
threads, and subprocess runners inherit the same count through the environment (`cocu_core.proc`).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

_local = threading.local()


def available_cores() -> int:
    """Why: the cores this process may run on (CPU affinity, e.g. a container's cpuset), not the host's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_concurrency(requested: int, cores: Optional[int] = None) -> int:
    """Why: 0 means one task per core; an explicit number is taken as given (at least 1)."""
    return max(1, requested) if requested > 0 else (cores or available_cores())


def resolve_threads(requested: int, concurrency: int, cores: Optional[int] = None) -> int:
    """Why: the `runtime.threads` policy: an explicit count, or 0 = cores // concurrent tasks, at least 1."""
    if requested > 0:
        return requested
    return max(1, (cores or available_cores()) // max(1, concurrency))


def current_threads() -> Optional[int]:
    """Why: subprocess runners started inside :func:`limit_threads` inherit the calling task's share."""
    return getattr(_local, "threads", None)


@contextmanager
def limit_threads(n: int) -> Iterator[int]:
    """Why: run a task's compute with `n` torch/OpenMP/BLAS threads (set in the calling thread, where torch
    and OpenMP keep the setting), restoring the previous counts afterwards."""
    n = max(1, int(n))
    prev_local = current_threads()
    _local.threads = n
    restore = []
    try:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(n)
        restore.append(lambda: torch.set_num_threads(before))
    except ImportError:
        pass
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        fb = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(n)
        restore.append(lambda: faiss.omp_set_num_threads(fb))
    limiter = None
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass
    try:
        yield n
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        for fn in reversed(restore):
            fn()
        _local.threads = prev_local
