"""Zero-shot classification views: an ImageNet-style folder (CLIP's curated names for WordNet-id folders) and the
toy world's val split (largest thing per image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cocu_core.compat import ensure_torchvision

# ---------------------------------------------------------------------------------------------
# File reading
# ---------------------------------------------------------------------------------------------
# COCO instance annotations -> label map (no pycocotools)
# ---------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------
# Segmentation datasets
from cocu_core.evaluation.datasets.base import DatasetFileError
from cocu_core.evaluation.datasets.folders import layout_error
from cocu_core.evaluation.datasets.labels import read_image, read_label_png
from cocu_core.evaluation.datasets.segmentation import ToyDataset
from cocu_core.toyworld.concepts import BY_NAME


@dataclass(frozen=True)
class ClsSample:
    """One classification image: ``image`` uint8 (H, W, 3) RGB and its class index."""

    id: str
    image: np.ndarray
    label: int


_CLS_EXT = (".jpeg", ".jpg", ".png")


class ClassificationFolder:
    """An ImageNet-style folder: ``<root>/val/<wnid or class>/*.JPEG`` (or the class folders directly
    under root). Class index = position of the folder in sorted order (ImageNet's convention for wnids).

    Class names: ``class_names.txt`` in root (or in the val folder), either one name a line aligned with
    the sorted folders, or ``<folder><TAB><name>`` lines; without it, folders named by ImageNet-1k WordNet
    ids (``n01440764``) get CLIP's curated names (``open_clip.IMAGENET_CLASSNAMES``, GroupViT's
    ``imagenet_classes``), matched through timm's list of the 1000 wnids in ImageNet's (sorted) order.
    """

    title = "classification folder"
    layout = "<root>/val/<class folder>/*.JPEG (or <root>/<class folder>/*.JPEG), optional <root>/class_names.txt"

    def __init__(self, root: str | Path, split: str = "val") -> None:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise layout_error(self.title, base.parent, f"folder {base.name!r}", self.layout)
        top = base / split if (base / split).is_dir() else base
        folders = sorted(d.name for d in top.iterdir() if d.is_dir())
        items: list[tuple[str, Path, int]] = []
        for k, f in enumerate(folders):
            files = sorted(p for p in (top / f).iterdir() if p.suffix.lower() in _CLS_EXT and p.is_file())
            items.extend((f"{f}/{p.stem}", p, k) for p in files)
        if not items:
            raise layout_error(self.title, top, "any class folder with images", self.layout)
        self.root = base
        self.folders = folders
        self.items = items
        self.class_names = self._names(base, top, folders)

    def _names(self, base: Path, top: Path, folders: list[str]) -> list[str]:
        path = next((p for p in (base / "class_names.txt", top / "class_names.txt") if p.is_file()), None)
        if path is None:
            return imagenet_names(folders, top)
        lines = [ln.rstrip("\n") for ln in path.read_text().splitlines() if ln.strip()]
        if lines and all("\t" in ln for ln in lines):
            mapping = dict(ln.split("\t", 1) for ln in lines)
            missing = [f for f in folders if f not in mapping]
            if missing:
                raise DatasetFileError(f"{path}: no name for folder(s) {missing[:3]}")
            return [mapping[f].strip() for f in folders]
        if len(lines) != len(folders):
            raise DatasetFileError(f"{path}: {len(lines)} names for {len(folders)} class folders (one a line, "
                                   "in sorted folder order, or '<folder>\\t<name>' lines)")
        return [ln.strip() for ln in lines]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ClsSample:
        sid, path, label = self.items[i]
        return ClsSample(sid, read_image(path), label)


def imagenet_1k_names() -> dict[str, str]:
    """Why: prompting with WordNet ids scores near chance; GroupViT prompts with CLIP's 1000 curated names,
    which are in the order of ImageNet-1k's sorted wnids (the class index), so the two lists zip."""
    ensure_torchvision()  # open_clip and timm import torchvision
    import open_clip
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = [info.index_to_label_name(i) for i in range(info.num_classes())]
    names = list(open_clip.IMAGENET_CLASSNAMES)
    if len(wnids) != len(names) or wnids != sorted(wnids):
        raise RuntimeError(f"timm's ImageNet wnids ({len(wnids)}) and open_clip's names ({len(names)}) do not align")
    return dict(zip(wnids, names))


def imagenet_names(folders: Sequence[str], top: Path) -> list[str]:
    """Why: folders named by ImageNet-1k wnids get CLIP's names; any other folder needs a class_names.txt."""
    known = imagenet_1k_names()
    bad = [f for f in folders if f not in known]
    if bad:
        raise DatasetFileError(f"{top}: class folder(s) {bad[:3]}{' ...' if len(bad) > 3 else ''} are not ImageNet-1k "
                               "WordNet ids (n01440764 style); add a class_names.txt (one name a line, in sorted folder "
                               "order, or '<folder>\t<name>' lines)")
    return [known[f] for f in folders]


class ToyClassification:
    """The toy val split as classification: each image's class is its largest *thing* by pixel count
    (ties: the lower concept id); images without a thing are skipped. Classes are the toy's things only
    (stuff covers most of every image and would make the label ambiguous)."""

    def __init__(self, root: str | Path) -> None:
        seg = ToyDataset(root)
        src = seg.source_class_names
        thing_ids = [i for i, n in enumerate(src) if n in BY_NAME and BY_NAME[n].kind == "thing"]
        if not thing_ids:
            raise DatasetFileError(f"{seg.root / 'class_names.txt'}: no toy thing classes")
        self.root = seg.root
        self.class_names = [src[i] for i in thing_ids]
        self.items: list[tuple[str, Path, int]] = []
        for it in seg.items:
            assert it.label is not None
            raw = read_label_png(it.label, ToyDataset.label_modes, "a single-channel PNG of class ids")
            counts = np.bincount(raw.ravel().astype(np.int64), minlength=len(src))[: len(src)]
            thing_counts = counts[thing_ids]
            if thing_counts.max() > 0:
                self.items.append((it.id, it.image, int(np.argmax(thing_counts))))
        self.skipped = len(seg.items) - len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ClsSample:
        sid, path, label = self.items[i]
        return ClsSample(sid, read_image(path), label)
