"""Finding a benchmark's files under its root: the standard layouts, id lists, image/label pairing, and one error
naming the layout it expected."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

# ---------------------------------------------------------------------------------------------
# File reading
# ---------------------------------------------------------------------------------------------
# COCO instance annotations -> label map (no pycocotools)
# ---------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------
# Segmentation datasets
from cocu_core.evaluation.datasets.base import DatasetLayoutError


@dataclass(frozen=True)
class Item:
    id: str
    image: Path
    label: Optional[Path]


def layout_error(title: str, root: Path, missing: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{title}: {missing} not found under {root}; expected layout: {layout}")


def resolve_root(root: str | Path, required: Sequence[str], nests: Sequence[str], title: str, layout: str) -> Path:
    """Why: accept the dataset folder itself or a parent that holds it under its usual name."""
    base = Path(root).expanduser()
    for nest in ("", *nests):
        cand = base / nest if nest else base
        if all((cand / r).exists() for r in required):
            return cand
    if not base.is_dir():
        raise layout_error(title, base.parent, f"folder {base.name!r}", layout)
    missing = next(r for r in required if not (base / r).exists())
    raise layout_error(title, base, repr(missing), layout)


def read_ids(path: Path, title: str, layout: str) -> list[str]:
    ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise layout_error(title, path.parent, f"any image id in {path.name!r} (empty)", layout)
    return ids


def pair_by_id(root: Path, ids: Sequence[str], img_dir: str, img_suffix: str, ann_dir: str, ann_suffix: str,
                title: str, layout: str) -> list[Item]:
    items = [Item(i, root / img_dir / f"{i}{img_suffix}", root / ann_dir / f"{i}{ann_suffix}") for i in ids]
    check_exist(items, root, title, layout)
    return items


def pair_folders(root: Path, img_dir: str, img_suffix: str, ann_dir: str, ann_suffix: str, title: str,
                  layout: str) -> list[Item]:
    """Why: mmseg's folder pairing: every image under img_dir (recursively, sorted) has its label at the
    same relative path under ann_dir with the label suffix in place of the image suffix."""
    top = root / img_dir
    found: list[str] = []
    for dirpath, _, files in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        for f in files:
            if f.endswith(img_suffix):
                stem = f[: -len(img_suffix)]
                found.append(stem if rel_dir == "." else f"{rel_dir}/{stem}".replace(os.sep, "/"))
    if not found:
        raise layout_error(title, top, f"any '*{img_suffix}' image", layout)
    found.sort()
    items = [Item(i, top / f"{i}{img_suffix}", root / ann_dir / f"{i}{ann_suffix}") for i in found]
    check_exist(items, root, title, layout, images=False)
    return items


def check_exist(items: Sequence[Item], root: Path, title: str, layout: str, images: bool = True) -> None:
    paths = [p for it in items for p in ((it.image, it.label) if images else (it.label,)) if p is not None]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise layout_error(title, root, f"'{missing[0].relative_to(root)}'{more}", layout)
