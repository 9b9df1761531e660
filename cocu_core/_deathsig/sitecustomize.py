"""Loaded at start-up by every Python process under a stage runner (this folder is put first on PYTHONPATH).

Why: tools such as clip-retrieval and img2dataset start spawn workers and a multiprocessing resource
tracker of their own; PR_SET_PDEATHSIG is not inherited across fork/exec, so each process must ask
for it itself. With ``COCU_DIE_WITH_PARENT=1`` every such process is SIGKILLed by the kernel when its
parent dies, so a killed stage takes its whole tree with it, level by level.
"""

import os
import sys


def _die_with_parent() -> None:
    """Why: set PDEATHSIG, then exit at once if the parent already died (we were re-parented to init)."""
    if os.environ.get("COCU_DIE_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:
        os._exit(1)


def _chain() -> None:
    """Why: this module shadows any other `sitecustomize` on the path; run that one too."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and spec.origin != __file__:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)


_die_with_parent()
_chain()
