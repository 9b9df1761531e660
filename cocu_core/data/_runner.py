"""Run img2dataset in its own process tree that dies with the stage (`python -m cocu_core.data._runner spec.json`).

Why a separate process: img2dataset installs a SIGINT handler and starts spawn-based worker pools.
If the stage is killed, orphaned workers would keep writing (a shard whose downloads then all fail
would be marked finished), so every process of this tree asks Linux to SIGKILL it when its parent dies.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from img2dataset.logger import LoggerProcess  # noqa: E402

from cocu_core.proc import die_with_parent  # noqa: E402


def _pool_initializer(parent_pid: int) -> None:
    die_with_parent(parent_pid)


class DyingLogger(LoggerProcess):
    """Why: img2dataset's logger process loops until told to stop; make it die with its parent too."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._cocu_parent = os.getpid()

    def run(self):
        die_with_parent(self._cocu_parent)
        return super().run()


class _SpawnContext:
    """Why: img2dataset exposes no pool initializer; its distributor gets this context, whose pools add one."""

    def __init__(self, method=None):
        self._ctx = multiprocessing.get_context(method)

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):  # noqa: N802
        if initializer is not None:
            raise RuntimeError("unexpected pool initializer from img2dataset")
        return self._ctx.Pool(processes, _pool_initializer, (os.getpid(),), maxtasksperchild)


def _patch_img2dataset() -> None:
    """Why: route img2dataset's worker pool and logger process through the dying variants above."""
    import img2dataset.distributor as dist
    import img2dataset.main as i2d_main

    dist.get_context = _SpawnContext
    i2d_main.LoggerProcess = DyingLogger


def main(spec_path: str) -> int:
    """Why: read the kwargs the stage prepared and run the real img2dataset with them."""
    spec = json.loads(open(spec_path).read())
    die_with_parent(int(spec.pop("_parent_pid")))
    _patch_img2dataset()
    from img2dataset import download

    download(**spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
