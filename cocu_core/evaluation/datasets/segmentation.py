"""Readers for the zero-shot segmentation benchmarks in their standard on-disk layouts.

Every reader yields ``SegSample(id, image uint8 (H, W, 3) RGB, label int64 (H, W))`` with labels at
the image's size, class ids in ``[0, n_classes)`` and ``ignore_index`` elsewhere; it carries the
protocol's class names (GroupViT's renamed lists, ``GROUPVIT_PROTOCOL.md``) and the protocol's test
settings as defaults. Label encodings on disk, and what each reader does with them:

- VOC 2012: palette PNGs of ids 0..20, 255 on object borders (ignored).
- PASCAL Context: mmseg's converted label PNGs, 0 = background, 1..59 the classes.
- COCO-Object: GroupViT's converted ``*_instanceTrainIds.png`` (0 = background incl. stuff and
  unlabelled, 1..80 things), or COCO's own ``instances_val2017.json`` rasterised here (polygons and
  RLE, no pycocotools): instances painted in file order, later over earlier, as COCO-Stuff built its
  maps; crowd regions are left as background by default (COCO-Stuff's ``includeCrowd=False``).
- COCO-Stuff 164k: mmseg's ``*_labelTrainIds.png``, 0..170, 255 unlabelled.
- Cityscapes: ``*_gtFine_labelTrainIds.png``, 0..18, 255 void.
- ADE20K: 0 = "other" -> ignored, ids 1..150 -> 0..149 (mmseg's ``reduce_zero_label``).
- ImageNet-S: RGB PNGs whose class id is R + 256 * G; 0 = other (background), 1000 = ignored (the
  ignore index of the CoCu configs, for both subsets); images over 1000x1000 pixels are downsampled
  to long side 1000 before inference (``ProtocolSettings.downsample_large``).

Saved predictions (``SegDataset.save_prediction``) are written in the file's own ids, as mmseg writes
them: reduced labels (ADE20K, the toy world) shifted back up by one, ImageNet-S as R + 256 * G.
- Toy world (this repo's ``val`` split): see ``ToyDataset``.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# File reading
# ---------------------------------------------------------------------------------------------
# COCO instance annotations -> label map (no pycocotools)
# ---------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------
# Segmentation datasets
from cocu_core.evaluation.datasets.base import (IGNORE_INDEX, IMAGENET_S_IGNORE, DatasetFileError, DatasetLayoutError,
                                                ProtocolSettings, SegSample)
from cocu_core.evaluation.datasets.classes import (ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_OBJECT_CLASSES,
                                                   COCO_STUFF_CLASSES, CONTEXT_CLASSES, IMAGENET_S50_CLASSES,
                                                   IMAGENET_S300_CLASSES, SETTINGS, VOC_CLASSES)
from cocu_core.evaluation.datasets.folders import (Item, check_exist, layout_error, pair_by_id, pair_folders, read_ids,
                                                   resolve_root)
from cocu_core.evaluation.datasets.labels import (SINGLE_CHANNEL, imagenet_s_ids, rasterize_coco, read_image,
                                                  read_label_png, reduce_zero_label)
from cocu_core.evaluation.pictures import save_palette_png, save_rgb_id_png, voc_palette


class SegDataset:
    """A zero-shot segmentation benchmark: indexable samples plus what evaluation needs to know about it.

    Attributes: ``name``, ``class_names`` (index = label id; 'background' at 0 when ``has_background``),
    ``has_background``, ``ignore_index``, ``palette`` (uint8 (N>=256, 3)), ``settings``
    (``ProtocolSettings``), ``root``; ``label_to_image_size`` is True: labels come at the image's size.
    """

    name: str = ""
    title: str = ""
    layout: str = ""
    label_to_image_size: bool = True
    label_modes: tuple[str, ...] = SINGLE_CHANNEL
    label_expected: str = "a single-channel PNG of class ids"
    label_offset: int = 0  # file id = class id + label_offset (1 where the file's 0 is "other", mmseg's reduce_zero_label)

    def __init__(self, root: Path, items: list[Item], class_names: Sequence[str], has_background: bool,
                 settings: ProtocolSettings, ignore_index: int = IGNORE_INDEX) -> None:
        if has_background and (not class_names or class_names[0] != "background"):
            raise ValueError(f"{self.name}: has_background needs 'background' as class 0")
        if has_background != (settings.bg_thresh is not None):
            raise ValueError(f"{self.name}: a background class needs a bg threshold, and only then")
        if 0 <= ignore_index < len(class_names):
            raise ValueError(f"{self.name}: ignore index {ignore_index} collides with a class id")
        self.root = root
        self.items = items
        self.class_names: list[str] = list(class_names)
        self.has_background = has_background
        self.settings = settings
        self.ignore_index = ignore_index
        self.palette = voc_palette(max(256, len(class_names) + 1, ignore_index + 1))
        if not has_background:  # VOC's colour 0 is black, read as "background": give class 0 colour 1, etc.
            self.palette[: len(class_names)] = voc_palette(len(class_names) + 1)[1:]

    @property
    def n_classes(self) -> int:
        """Why: the confusion matrix size (background included where the dataset has it)."""
        return len(self.class_names)

    @property
    def ids(self) -> list[str]:
        """Why: sample ids in reading order (file stems, with sub-folders where the layout has them)."""
        return [it.id for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> SegSample:
        item = self.items[i]
        image = read_image(item.image)
        label = self.read_label(item)
        if label.shape != image.shape[:2]:
            raise DatasetFileError(
                f"{self.name}: label {item.label or item.id} is {label.shape[1]}x{label.shape[0]} but image "
                f"{item.image} is {image.shape[1]}x{image.shape[0]}"
            )
        return SegSample(item.id, image, label)

    def read_label(self, item: Item) -> np.ndarray:
        """Why: one label map in this dataset's class ids (int64), ignore where unlabelled."""
        assert item.label is not None
        return self.decode(read_label_png(item.label, self.label_modes, self.label_expected))

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Why: the file's values -> class ids; plain datasets store them as they are."""
        return raw.astype(np.int64)

    def to_file_ids(self, pred: np.ndarray) -> np.ndarray:
        """Why: a prediction in the ids the dataset's label files use, so it can be scored against them directly."""
        return np.asarray(pred, np.int64) + self.label_offset

    @property
    def file_palette(self) -> np.ndarray:
        """Why: the palette indexed by file id, each class in the colour the panels give it (file id 0 black)."""
        pal = voc_palette(256)
        n = min(self.n_classes, 256 - self.label_offset)
        pal[self.label_offset:self.label_offset + n] = self.palette[:n]
        return pal

    def save_prediction(self, path: str | Path, pred: np.ndarray) -> Path:
        """Why: `--save-predictions` writes what mmseg writes: a palette PNG of the dataset's own label ids."""
        return save_palette_png(path, self.to_file_ids(pred), self.file_palette)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, n={len(self)}, classes={self.n_classes})"


class VOCDataset(SegDataset):
    """PASCAL VOC 2012 val: 20 classes + background, GroupViT's names (table, plant, monitor)."""

    name, title = "voc", "PASCAL VOC 2012"
    layout = ("<root>/JPEGImages/<id>.jpg, <root>/SegmentationClass/<id>.png (palette PNGs), "
              "<root>/ImageSets/Segmentation/val.txt (root: VOCdevkit/VOC2012 or a folder holding it)")
    label_modes = ("P", "L")
    label_expected = "a palette PNG of class indices (mode P)"

    def __init__(self, root: str | Path, split: str = "val") -> None:
        split_file = f"ImageSets/Segmentation/{split}.txt"
        base = resolve_root(root, ["JPEGImages", "SegmentationClass", split_file], ["VOC2012", "VOCdevkit/VOC2012"],
                             self.title, self.layout)
        ids = read_ids(base / split_file, self.title, self.layout)
        items = pair_by_id(base, ids, "JPEGImages", ".jpg", "SegmentationClass", ".png", self.title, self.layout)
        super().__init__(base, items, VOC_CLASSES, True, SETTINGS["voc"])


class ContextDataset(SegDataset):
    """PASCAL Context 59 + background on VOC2010 val, in mmseg's converted layout (0 = background)."""

    name, title = "context", "PASCAL Context"
    layout = ("<root>/JPEGImages/<id>.jpg, <root>/SegmentationClassContext/<id>.png (ids 0..59, 0 = background), "
              "<root>/ImageSets/SegmentationContext/val.txt (root: VOCdevkit/VOC2010 or a folder holding it)")

    def __init__(self, root: str | Path, split: str = "val") -> None:
        split_file = f"ImageSets/SegmentationContext/{split}.txt"
        base = resolve_root(root, ["JPEGImages", "SegmentationClassContext", split_file],
                             ["VOC2010", "VOCdevkit/VOC2010"], self.title, self.layout)
        ids = read_ids(base / split_file, self.title, self.layout)
        items = pair_by_id(base, ids, "JPEGImages", ".jpg", "SegmentationClassContext", ".png", self.title,
                            self.layout)
        super().__init__(base, items, CONTEXT_CLASSES, True, SETTINGS["context"])


class COCOObjectDataset(SegDataset):
    """COCO-Object val2017: 80 things + background (stuff and unlabelled are background).

    Reads GroupViT's converted label PNGs when present, else rasterises COCO's instance JSON.
    ``crowd`` says what crowd regions become in the JSON path: "background" (as COCO-Stuff's maps,
    built without crowd annotations) or "ignore".
    """

    name, title = "coco_object", "COCO-Object"
    layout = ("<root>/images/val2017/<id>.jpg + <root>/annotations/val2017/<id>_instanceTrainIds.png "
              "(GroupViT's convert_coco_object.py), or <root>/annotations/instances_val2017.json + "
              "<root>/val2017/<id>.jpg (or <root>/images/val2017/<id>.jpg)")

    def __init__(self, root: str | Path, crowd: Literal["background", "ignore"] = "background",
                 source: Literal["auto", "png", "json"] = "auto") -> None:
        if crowd not in ("background", "ignore"):
            raise ValueError(f"crowd must be 'background' or 'ignore', got {crowd!r}")
        base = Path(root).expanduser()
        ann_png = base / "annotations" / "val2017"
        json_path = base / "annotations" / "instances_val2017.json"
        has_png = ann_png.is_dir() and any(f.endswith("_instanceTrainIds.png") for f in os.listdir(ann_png))
        self.crowd = crowd
        self._json: dict[str, tuple[int, int, list[dict]]] = {}
        self._cat_to_label: dict[int, int] = {}
        if source == "png" or (source == "auto" and has_png):
            self.source = "png"
            items = pair_folders(base, "images/val2017", ".jpg", "annotations/val2017", "_instanceTrainIds.png",
                                  self.title, self.layout)
        elif source in ("json", "auto") and json_path.is_file():
            self.source = "json"
            items = self._load_json(base, json_path)
        else:
            if not base.is_dir():
                raise layout_error(self.title, base.parent, f"folder {base.name!r}", self.layout)
            raise layout_error(self.title, base, "'annotations/val2017/*_instanceTrainIds.png' or "
                                "'annotations/instances_val2017.json'", self.layout)
        super().__init__(base, items, COCO_OBJECT_CLASSES, True, SETTINGS["coco_object"])

    def _load_json(self, base: Path, json_path: Path) -> list[Item]:
        try:
            data = json.loads(json_path.read_text())
            cats = sorted(int(c["id"]) for c in data["categories"])
            images = data["images"]
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetFileError(f"{json_path}: not a COCO instances file ({e})") from None
        if len(cats) != 80:
            raise DatasetFileError(f"{json_path}: expected COCO's 80 thing categories, found {len(cats)}")
        self._cat_to_label = {cid: k + 1 for k, cid in enumerate(cats)}
        img_dir = next((d for d in (base / "val2017", base / "images" / "val2017") if d.is_dir()), None)
        if img_dir is None:
            raise layout_error(self.title, base, "'val2017/' (or 'images/val2017/') image folder", self.layout)
        by_image: dict[int, list[dict]] = {}
        for a in anns:
            by_image.setdefault(a.get("image_id"), []).append(a)
        items = []
        for im in sorted(images, key=lambda r: r["file_name"]):
            sid = Path(im["file_name"]).stem
            items.append(Item(sid, img_dir / im["file_name"], None))
            self._json[sid] = (int(im["height"]), int(im["width"]), by_image.get(im["id"], []))
        if not items:
            raise layout_error(self.title, base, f"any image listed in {json_path.name}", self.layout)
        check_exist(items, base, self.title, self.layout)
        return items

    def read_label(self, item: Item) -> np.ndarray:
        if item.label is not None:
            return super().read_label(item)
        h, w, anns = self._json[item.id]
        return rasterize_coco(anns, h, w, self._cat_to_label, self.crowd, self.ignore_index)


class COCOStuffDataset(SegDataset):
    """COCO-Stuff 164k val2017: 171 classes (80 things + 91 stuff), mmseg's labelTrainIds, no background."""

    name, title = "coco_stuff", "COCO-Stuff 164k"
    layout = ("<root>/images/val2017/<id>.jpg, <root>/annotations/val2017/<id>_labelTrainIds.png "
              "(ids 0..170, 255 unlabelled; root: coco_stuff164k or a folder holding it)")

    def __init__(self, root: str | Path) -> None:
        base = resolve_root(root, ["images/val2017", "annotations/val2017"], ["coco_stuff164k"], self.title,
                             self.layout)
        items = pair_folders(base, "images/val2017", ".jpg", "annotations/val2017", "_labelTrainIds.png",
                              self.title, self.layout)
        super().__init__(base, items, COCO_STUFF_CLASSES, False, SETTINGS["coco_stuff"])


class CityscapesDataset(SegDataset):
    """Cityscapes val: 19 train classes, ids from ``*_gtFine_labelTrainIds.png`` (255 = void)."""

    name, title = "cityscapes", "Cityscapes"
    layout = ("<root>/leftImg8bit/val/<city>/<name>_leftImg8bit.png, "
              "<root>/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png (from cityscapesscripts' createTrainIdLabelImgs)")

    def __init__(self, root: str | Path) -> None:
        base = resolve_root(root, ["leftImg8bit/val", "gtFine/val"], ["cityscapes"], self.title, self.layout)
        items = pair_folders(base, "leftImg8bit/val", "_leftImg8bit.png", "gtFine/val", "_gtFine_labelTrainIds.png",
                              self.title, self.layout)
        super().__init__(base, items, CITYSCAPES_CLASSES, False, SETTINGS["cityscapes"])


class ADE20KDataset(SegDataset):
    """ADE20K (SceneParsing) validation: 150 classes; 0 ("other") ignored, the rest shifted down by one."""

    name, title = "ade20k", "ADE20K"
    layout = ("<root>/images/validation/<id>.jpg, <root>/annotations/validation/<id>.png "
              "(ids 0..150, 0 = other; root: ADEChallengeData2016 or a folder holding it)")

    def __init__(self, root: str | Path) -> None:
        base = resolve_root(root, ["images/validation", "annotations/validation"], ["ADEChallengeData2016"],
                             self.title, self.layout)
        items = pair_folders(base, "images/validation", ".jpg", "annotations/validation", ".png", self.title,
                              self.layout)
        super().__init__(base, items, ADE20K_CLASSES, False, SETTINGS["ade20k"])

    label_offset = 1

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return reduce_zero_label(raw, self.ignore_index)


class ImageNetSDataset(SegDataset):
    """ImageNet-S 50 / 300 validation: class id = R + 256 G of the label PNG, 0 = other (background).

    ImageNet-S's ignored value 1000 is the ``ignore_index`` of both subsets, as in the CoCu configs (the
    palette then has 1001 entries); predictions are saved as ImageNet-S stores labels (R + 256 * G).
    """

    title = "ImageNet-S"
    label_modes = ("RGB", "RGBA", "I", "I;16")
    label_expected = "an RGB PNG with class id = R + 256 * G"

    def __init__(self, root: str | Path, subset: Literal[50, 300] = 50) -> None:
        if subset not in (50, 300):
            raise ValueError(f"ImageNet-S subset must be 50 or 300, got {subset!r}")
        self.name = f"imagenet_s{subset}"
        self.title = f"ImageNet-S {subset}"
        self.layout = (f"<root>/validation/<wnid>/<name>.JPEG, <root>/validation-segmentation/<wnid>/<name>.png "
                       f"(RGB, id = R + 256*G, 0 = other, 1000 = ignored; root: ImageNetS{subset} or a folder holding it)")
        base = resolve_root(root, ["validation", "validation-segmentation"],
                             [f"ImageNetS{subset}", f"ImageNetS/ImageNetS{subset}", f"imagenet-s/ImageNetS{subset}"],
                             self.title, self.layout)
        items = pair_folders(base, "validation", ".JPEG", "validation-segmentation", ".png", self.title, self.layout)
        names = IMAGENET_S50_CLASSES if subset == 50 else IMAGENET_S300_CLASSES
        super().__init__(base, items, names, True, SETTINGS[self.name], ignore_index=IMAGENET_S_IGNORE)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return imagenet_s_ids(raw)

    def save_prediction(self, path: str | Path, pred: np.ndarray) -> Path:
        """Why: ids reach 300, past a palette PNG: written as ImageNet-S's own labels (R = id % 256, G = id // 256)."""
        return save_rgb_id_png(path, self.to_file_ids(pred))


class ToyDataset(SegDataset):
    """The toy world's ``val`` split (VOC layout + ``class_names.txt``, written by toyworld/generate.py).

    Every toy pixel belongs to a concept: the renderer fills the whole image with stuff bands before
    drawing things, so id 0 ('background' in class_names.txt) never occurs. The toy is therefore scored
    like COCO-Stuff and ADE20K: no background class and no threshold (a background prediction could
    only be wrong), labels reduced by one (0 -> ignore, 1..16 -> 0..15). Images are small (64 px), so
    no resize beyond the image and one window covering it: resize, crop and stride = the image side.
    """

    name, title = "toy", "toy world val"
    layout = ("<root>/JPEGImages/<id>.jpg, <root>/SegmentationClass/<id>.png (ids, 0 = background), "
              "<root>/ImageSets/Segmentation/val.txt, <root>/class_names.txt (root: the world's val/ folder "
              "or the world folder holding it)")
    label_modes = ("L", "P")

    def __init__(self, root: str | Path) -> None:
        base = resolve_root(root, ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation/val.txt",
                                    "class_names.txt"], ["val"], self.title, self.layout)
        names = [ln.strip() for ln in (base / "class_names.txt").read_text().splitlines() if ln.strip()]
        if len(names) < 2 or names[0] != "background":
            raise DatasetFileError(f"{base / 'class_names.txt'}: expected 'background' then the concepts, one a line")
        ids = read_ids(base / "ImageSets/Segmentation/val.txt", self.title, self.layout)
        items = pair_by_id(base, ids, "JPEGImages", ".jpg", "SegmentationClass", ".png", self.title, self.layout)
        try:
            with Image.open(items[0].image) as im:
                side = max(im.size)
        except OSError as e:
            raise DatasetFileError(f"cannot read image {items[0].image}: {e}") from None
        settings = ProtocolSettings(resize_long=side, resize_short=side, crop=side, stride=side, bg_thresh=None)
        self.source_class_names = names
        super().__init__(base, items, names[1:], False, settings)

    label_offset = 1

    def decode(self, raw: np.ndarray) -> np.ndarray:
        return reduce_zero_label(raw, self.ignore_index)


DATASETS: dict[str, Callable[..., SegDataset]] = {
    "toy": ToyDataset,
    "voc": VOCDataset,
    "context": ContextDataset,
    "coco_object": COCOObjectDataset,
    "coco_stuff": COCOStuffDataset,
    "cityscapes": CityscapesDataset,
    "ade20k": ADE20KDataset,
    "imagenet_s50": partial(ImageNetSDataset, subset=50),
    "imagenet_s300": partial(ImageNetSDataset, subset=300),
}


def get_dataset(name: str, root: str | Path, **kwargs: Any) -> SegDataset:
    """Why: the evaluation stage names datasets as the config does; one entry point with clear errors."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    if root is None or str(root) == "":
        raise DatasetLayoutError(f"dataset {name!r} needs a root folder (config eval.roots[{name!r}])")
    return DATASETS[name](root, **kwargs)


# ---------------------------------------------------------------------------------------------
# Zero-shot classification


