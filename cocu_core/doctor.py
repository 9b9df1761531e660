"""`cocu doctor`: prove the environment is usable before a long run starts."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from cocu_core.compat import ensure_torchvision
from cocu_core.config import load_config
from cocu_core.wordnet_data import ensure_nltk_path

ROOT = Path(__file__).resolve().parent.parent


def _check(name: str, fn: Callable[[], str], say: Callable[[str], None]) -> bool:
    try:
        detail = fn()
        say(f"  ok    {name}{': ' + detail if detail else ''}")
        return True
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure, never raises
        say(f"  FAIL  {name}: {type(exc).__name__}: {exc}")
        return False


def _torchvision() -> str:
    patched = ensure_torchvision()
    import torchvision.transforms  # noqa: F401

    return "CPU workaround applied" if patched else "native import"


def _imports() -> str:
    mods = ["torch", "open_clip", "timm", "faiss", "autofaiss", "img2dataset", "clip_retrieval.clip_inference.main", "prefect"]
    vers = []
    for m in mods:
        mod = importlib.import_module(m)
        vers.append(f"{m.split('.')[0]} {getattr(mod, '__version__', '')}".strip())
    return ", ".join(vers)


def _no_backport() -> str:
    import dataclasses

    if "site-packages" in (dataclasses.__file__ or ""):
        raise RuntimeError("the `dataclasses` backport is installed; run `pip uninstall -y dataclasses`")
    return ""


def _wordnet() -> str:
    ensure_nltk_path()
    from nltk.corpus import wordnet as wn

    got = wn.morphy("geese", "n")
    if got != "goose":
        raise RuntimeError(f"morphy('geese') gave {got!r}")
    return "morphy('geese') == 'goose'"


def _configs() -> str:
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    for n in names:
        load_config(ROOT / "configs" / n)
    return ", ".join(names)


def run_checks(say: Callable[[str], None]) -> bool:
    """Why: one call used by setup's smoke check and by users debugging an install."""
    say("cocu doctor")
    checks = [
        ("torchvision", _torchvision),
        ("imports", _imports),
        ("no dataclasses backport", _no_backport),
        ("wordnet", _wordnet),
        ("configs", _configs),
    ]
    ok = all([_check(n, f, say) for n, f in checks])
    say("all checks passed" if ok else "some checks failed")
    return ok
