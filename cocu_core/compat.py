"""Make torchvision importable beside a CPU-only torch, and do nothing where it already imports.

PyPI's torchvision wheel is a CUDA build whose compiled ops cannot load next to the CPU torch
wheel; its ``_meta_registrations`` then fails with ``operator torchvision::nms does not exist``.
Defining the two op schemas it registers fake kernels for lets the pure-Python parts (transforms,
models) import. Detection ops stay unavailable; the project needs none.
"""

from __future__ import annotations

import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_patched = False
_library = None  # keep a reference: the fragment lives as long as this object


def torchvision_needs_patch() -> bool:
    """Why: tell a broken CUDA-wheel torchvision from a working one, so we patch only the former."""
    try:
        import torchvision  # noqa: F401

        return False
    except RuntimeError as exc:
        if "torchvision::nms" in str(exc) or "does not exist" in str(exc):
            _drop_torchvision_modules()
            return True
        raise


def _drop_torchvision_modules() -> None:
    """Why: a failed import leaves half-initialised modules that would poison the next import."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> bool:
    """Why: run once before open_clip/timm/clip-retrieval import torchvision; returns True if patched."""
    global _patched, _library
    if _patched:
        return True
    if "torchvision" in sys.modules:
        return False
    if not torchvision_needs_patch():
        return False
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            _library.define(f"{op}{_SCHEMA}")
        except RuntimeError:
            pass  # already defined by a partial load
    import torchvision  # noqa: F401  (must now succeed)

    _patched = True
    return True


def is_patched() -> bool:
    """Why: tests and `cocu doctor` report whether the workaround was needed."""
    return _patched
