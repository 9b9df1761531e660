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
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
from PIL import Image

from cocu_core.compat import ensure_torchvision
from cocu_core.evaluation.pictures import save_palette_png, save_rgb_id_png, voc_palette
from cocu_core.toyworld.concepts import BY_NAME

IGNORE_INDEX = 255
IMAGENET_S_IGNORE = 1000  # ImageNet-S's own "ignored part" value


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing or not in its standard layout; the message shows the expected one."""


class DatasetFileError(ValueError):
    """One file of a dataset cannot be used (unreadable, wrong encoding, image/label size mismatch)."""


@dataclass(frozen=True)
class ProtocolSettings:
    """The test-time settings of the protocol for one dataset (GROUPVIT_PROTOCOL.md's table).

    Resize keeps the aspect ratio: the short side goes to ``resize_short`` unless the long side would
    pass ``resize_long`` (mmseg's ``Resize(img_scale=(long, short), keep_ratio=True)``); then sliding
    ``crop`` windows every ``stride`` px. ``bg_thresh`` is None where the dataset has no background class.
    ``downsample_large``: images of more than its square in pixels first go to long side ``downsample_large``.
    """

    resize_long: int
    resize_short: int
    crop: int
    stride: int
    bg_thresh: Optional[float]
    downsample_large: Optional[int] = None

    def override(
        self,
        resize_long: Optional[int] = None,
        resize_short: Optional[int] = None,
        crop: Optional[int] = None,
        stride: Optional[int] = None,
        bg_thresh: Optional[float] = None,
    ) -> "ProtocolSettings":
        """Why: config fields left None take the dataset's default; a threshold never gives a
        background class to a dataset that has none."""
        kw: dict[str, Any] = {k: v for k, v in (("resize_long", resize_long), ("resize_short", resize_short),
                                                 ("crop", crop), ("stride", stride)) if v is not None}
        if bg_thresh is not None and self.bg_thresh is not None:
            kw["bg_thresh"] = float(bg_thresh)
        return replace(self, **kw)


@dataclass(frozen=True)
class SegSample:
    """One evaluation image: ``image`` uint8 (H, W, 3) RGB, ``label`` int64 (H, W) class ids or ignore."""

    id: str
    image: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class _Item:
    id: str
    image: Path
    label: Optional[Path]


# Settings of the protocol table (resize long/short, crop, stride, bg threshold).
_BG_448 = dict(resize_long=2048, resize_short=448, crop=448, stride=224)
SETTINGS: dict[str, ProtocolSettings] = {
    "voc": ProtocolSettings(**_BG_448, bg_thresh=0.95),
    "context": ProtocolSettings(**_BG_448, bg_thresh=0.35),
    "coco_object": ProtocolSettings(**_BG_448, bg_thresh=0.95),
    "imagenet_s50": ProtocolSettings(**_BG_448, bg_thresh=0.95, downsample_large=1000),
    "imagenet_s300": ProtocolSettings(**_BG_448, bg_thresh=0.75, downsample_large=1000),
    "coco_stuff": ProtocolSettings(resize_long=2048, resize_short=512, crop=224, stride=112, bg_thresh=None),
    "cityscapes": ProtocolSettings(resize_long=2048, resize_short=1024, crop=448, stride=224, bg_thresh=None),
    "ade20k": ProtocolSettings(resize_long=2048, resize_short=512, crop=224, stride=112, bg_thresh=None),
}

# --- class names (index = label id). GroupViT renames VOC/Context classes for better prompts. ---
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "table", "dog", "horse", "motorbike", "person", "plant", "sheep", "sofa", "train", "monitor",
)
CONTEXT_CLASSES: tuple[str, ...] = (
    "background", "airplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "plant", "road",
    "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree",
    "truck", "monitor", "wall", "water", "window", "wood",
)
COCO_OBJECT_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# COCO's 80 thing category ids (1..90 with 10 unused), in the order of COCO_OBJECT_CLASSES[1:].
COCO_THING_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# ADE20K: mmseg's list has 'bed ' with a trailing space; it is stripped here (CLIP's tokenizer keeps
# "bed ." and "bed." apart only by that space, a difference of no consequence for a class prompt).
ADE20K_CLASSES: tuple[str, ...] = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
    'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
    'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher',
    'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier',
    'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)

COCO_STUFF_CLASSES: tuple[str, ...] = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush', 'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet',
    'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds', 'counter',
    'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble', 'floor-other',
    'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog', 'food-other', 'fruit', 'furniture-other', 'grass',
    'gravel', 'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss',
    'mountain', 'mud', 'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform',
    'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug', 'salad', 'sand', 'sea',
    'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs', 'stone', 'straw', 'structural-other',
    'table', 'tent', 'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick', 'wall-concrete', 'wall-other',
    'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind',
    'window-other', 'wood',
)

IMAGENET_S50_CLASSES: tuple[str, ...] = (
    'background', 'goldfish', 'tiger shark', 'goldfinch', 'tree frog', 'kuvasz', 'red fox', 'siamese cat',
    'american black bear', 'ladybug', 'sulphur butterfly', 'wood rabbit', 'hamster', 'wild boar', 'gibbon',
    'african elephant', 'giant panda', 'airliner', 'ashcan', 'ballpoint', 'beach wagon', 'boathouse',
    'bullet train', 'cellular telephone', 'chest', 'clog', 'container ship', 'digital watch', 'dining table',
    'golf ball', 'grand piano', 'iron', 'lab coat', 'mixing bowl', 'motor scooter', 'padlock', 'park bench',
    'purse', 'streetcar', 'table lamp', 'television', 'toilet seat', 'umbrella', 'vase', 'water bottle',
    'water tower', 'yawl', 'street sign', 'lemon', 'carbonara', 'agaric',
)

IMAGENET_S300_CLASSES: tuple[str, ...] = (
    'background', 'tench', 'goldfish', 'tiger shark', 'hammerhead', 'electric ray', 'ostrich', 'goldfinch',
    'house finch', 'indigo bunting', 'kite', 'common newt', 'axolotl', 'tree frog', 'tailed frog', 'mud turtle',
    'banded gecko', 'american chameleon', 'whiptail', 'african chameleon', 'komodo dragon', 'american alligator',
    'triceratops', 'thunder snake', 'ringneck snake', 'king snake', 'rock python', 'horned viper', 'harvestman',
    'scorpion', 'garden spider', 'tick', 'african grey', 'lorikeet', 'red-breasted merganser', 'wallaby', 'koala',
    'jellyfish', 'sea anemone', 'conch', 'fiddler crab', 'american lobster', 'spiny lobster', 'isopod', 'bittern',
    'crane', 'limpkin', 'bustard', 'albatross', 'toy terrier', 'afghan hound', 'bluetick', 'borzoi',
    'irish wolfhound', 'whippet', 'ibizan hound', 'staffordshire bullterrier', 'border terrier',
    'yorkshire terrier', 'lakeland terrier', 'giant schnauzer', 'standard schnauzer', 'scotch terrier', 'lhasa',
    'english setter', 'clumber', 'english springer', 'welsh springer spaniel', 'kuvasz', 'kelpie', 'doberman',
    'miniature pinscher', 'malamute', 'pug', 'leonberg', 'great pyrenees', 'samoyed', 'brabancon griffon',
    'cardigan', 'coyote', 'red fox', 'kit fox', 'grey fox', 'persian cat', 'siamese cat', 'cougar', 'lynx',
    'tiger', 'american black bear', 'sloth bear', 'ladybug', 'leaf beetle', 'weevil', 'bee', 'cicada',
    'leafhopper', 'damselfly', 'ringlet', 'cabbage butterfly', 'sulphur butterfly', 'sea cucumber', 'wood rabbit',
    'hare', 'hamster', 'wild boar', 'hippopotamus', 'bighorn', 'ibex', 'badger', 'three-toed sloth', 'orangutan',
    'gibbon', 'colobus', 'spider monkey', 'squirrel monkey', 'madagascar cat', 'indian elephant',
    'african elephant', 'giant panda', 'barracouta', 'eel', 'coho', 'academic gown', 'accordion', 'airliner',
    'ambulance', 'analog clock', 'ashcan', 'backpack', 'balloon', 'ballpoint', 'barbell', 'barn', 'bassoon',
    'bath towel', 'beach wagon', 'bicycle-built-for-two', 'binoculars', 'boathouse', 'bonnet', 'bookcase', 'bow',
    'brass', 'breastplate', 'bullet train', 'cannon', 'can opener', "carpenter's kit", 'cassette',
    'cellular telephone', 'chain saw', 'chest', 'china cabinet', 'clog', 'combination lock', 'container ship',
    'corkscrew', 'crate', 'crock pot', 'digital watch', 'dining table', 'dishwasher', 'doormat', 'dutch oven',
    'electric fan', 'electric locomotive', 'envelope', 'file', 'folding chair', 'football helmet', 'freight car',
    'french horn', 'fur coat', 'garbage truck', 'goblet', 'golf ball', 'grand piano', 'half track', 'hamper',
    'hard disc', 'harmonica', 'harvester', 'hook', 'horizontal bar', 'horse cart', 'iron', "jack-o'-lantern",
    'lab coat', 'ladle', 'letter opener', 'liner', 'mailbox', 'megalith', 'military uniform', 'milk can',
    'mixing bowl', 'monastery', 'mortar', 'mosquito net', 'motor scooter', 'mountain bike', 'mountain tent',
    'mousetrap', 'necklace', 'nipple', 'ocarina', 'padlock', 'palace', 'parallel bars', 'park bench', 'pedestal',
    'pencil sharpener', 'pickelhaube', 'pillow', 'planetarium', 'plastic bag', 'polaroid camera', 'pole', 'pot',
    'purse', 'quilt', 'radiator', 'radio', 'radio telescope', 'rain barrel', 'reflex camera', 'refrigerator',
    'rifle', 'rocking chair', 'rubber eraser', 'rule', 'running shoe', 'sewing machine', 'shield', 'shoji', 'ski',
    'ski mask', 'slot', 'soap dispenser', 'soccer ball', 'sock', 'soup bowl', 'space heater', 'spider web',
    'spindle', 'sports car', 'steel arch bridge', 'stethoscope', 'streetcar', 'submarine', 'swimming trunks',
    'syringe', 'table lamp', 'tank', 'teddy', 'television', 'throne', 'tile roof', 'toilet seat', 'trench coat',
    'trimaran', 'typewriter keyboard', 'umbrella', 'vase', 'volleyball', 'wardrobe', 'warplane', 'washer',
    'water bottle', 'water tower', 'whiskey jug', 'wig', 'wine bottle', 'wok', 'wreck', 'yawl', 'yurt',
    'street sign', 'traffic light', 'consomme', 'ice cream', 'bagel', 'cheeseburger', 'hotdog', 'mashed potato',
    'spaghetti squash', 'bell pepper', 'cardoon', 'granny smith', 'strawberry', 'lemon', 'carbonara', 'burrito',
    'cup', 'coral reef', "yellow lady's slipper", 'buckeye', 'agaric', 'gyromitra', 'earthstar', 'bolete',
)

# ---------------------------------------------------------------------------------------------
# File reading


def _read_image(path: Path) -> np.ndarray:
    """Why: every reader returns RGB uint8 whatever the file's mode (greyscale JPEGs exist in COCO)."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetLayoutError(f"image file disappeared: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetFileError(f"cannot read image {path}: {e}") from None


_SINGLE = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def _read_label_png(path: Path, modes: Sequence[str], expected: str) -> np.ndarray:
    """Why: label PNGs are read raw (palette indices, not colours) and their mode checked, so a
    colour-converted or mis-saved label file fails with its name instead of scoring nonsense."""
    try:
        with Image.open(path) as im:
            if im.mode not in modes:
                raise DatasetFileError(f"{path}: expected {expected}, got a PNG of mode {im.mode}")
            return np.array(im)
    except FileNotFoundError:
        raise DatasetLayoutError(f"label file disappeared: {path}") from None
    except DatasetFileError:
        raise
    except (OSError, ValueError) as e:
        raise DatasetFileError(f"cannot read label {path}: {e}") from None


def reduce_zero_label(raw: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Why: mmseg's ``reduce_zero_label``: id 0 ("other") and 255 become ignore, the rest shift down by one."""
    lab = raw.astype(np.int64)
    out = lab - 1
    out[(lab == 0) | (lab == 255)] = ignore_index
    return out


def imagenet_s_ids(raw: np.ndarray) -> np.ndarray:
    """Why: ImageNet-S stores class ids above 255 in colour PNGs: id = R + 256 * G (its README)."""
    if raw.ndim == 3:
        return raw[..., 0].astype(np.int64) + 256 * raw[..., 1].astype(np.int64)
    return raw.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# COCO instance annotations -> label map (no pycocotools)


def decode_rle_counts(counts: str | bytes) -> list[int]:
    """Why: COCO's compressed RLE string (pycocotools' ``rleFrString`` format): 5-bit groups, offset 48,
    bit 0x20 = more groups, 0x10 of the last group = sign; counts after the second are deltas to i-2."""
    s = counts.encode() if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p >= len(s):
                raise DatasetFileError("truncated compressed RLE string in COCO annotation")
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_mask(rle: dict, h: int, w: int) -> np.ndarray:
    """Why: COCO run lengths (column-major, starting with a run of 0s), compressed or not."""
    counts = rle.get("counts")
    size = rle.get("size", [h, w])
    if isinstance(counts, (str, bytes)):
        counts = decode_rle_counts(counts)
    if not isinstance(counts, list) or list(size) != [h, w]:
        raise DatasetFileError(f"RLE annotation of size {size} for an image of {h}x{w}, or bad counts")
    runs = np.asarray(counts, np.int64)
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise DatasetFileError(f"RLE counts sum to {int(runs.sum())}, expected {h * w} for {h}x{w}")
    vals = np.arange(len(runs)) % 2 == 1
    flat = np.repeat(vals, runs)
    return flat.reshape(w, h).T


def polygon_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """Why: COCO polygons filled by the pixel-centre rule (pixel (y, x) is in when (x+.5, y+.5) is inside,
    even-odd), parts of one instance unioned; vectorised as row crossings -> toggles -> cumulative sum."""
    mask = np.zeros((h, w), bool)
    yc = np.arange(h, dtype=np.float64) + 0.5
    for poly in polygons:
        xy = np.asarray(poly, np.float64).reshape(-1, 2)
        if len(xy) < 3:
            continue
        x0, y0 = xy[:, 0], xy[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        cross = (yc[:, None] >= lo[None]) & (yc[:, None] < hi[None])  # half-open: a vertex counts once
        rows, edges = np.nonzero(cross)
        if not len(rows):
            continue
        t = (yc[rows] - y0[edges]) / (y1[edges] - y0[edges])
        xs = x0[edges] + t * (x1[edges] - x0[edges])
        start = np.clip(np.floor(xs - 0.5).astype(np.int64) + 1, 0, w)  # first pixel whose centre is right of xs
        toggles = np.zeros((h, w + 1), np.int32)
        np.add.at(toggles, (rows, start), 1)
        mask |= (np.cumsum(toggles[:, :w], axis=1) & 1).astype(bool)
    return mask


def annotation_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """Why: one COCO ``segmentation`` field (polygon list, RLE dict, or list of RLE dicts) -> bool mask."""
    if isinstance(segmentation, dict):
        return rle_mask(segmentation, h, w)
    if isinstance(segmentation, list):
        if segmentation and isinstance(segmentation[0], dict):
            out = np.zeros((h, w), bool)
            for r in segmentation:
                out |= rle_mask(r, h, w)
            return out
        return polygon_mask(segmentation, h, w)
    raise DatasetFileError(f"unknown COCO segmentation of type {type(segmentation).__name__}")


def rasterize_coco(annotations: Sequence[dict], h: int, w: int, cat_to_label: dict[int, int],
                   crowd: Literal["background", "ignore"] = "background",
                   ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Why: COCO-Object's label map from instances: things painted in file order (later over earlier),
    everything else background; crowd regions skipped (background) or marked ignore."""
    label = np.zeros((h, w), np.int64)
    for ann in annotations:
        cid = ann.get("category_id")
        if cid not in cat_to_label:
            continue
        m = annotation_mask(ann.get("segmentation", []), h, w)
        if ann.get("iscrowd", 0):
            if crowd == "ignore":
                label[m] = ignore_index
            continue
        label[m] = cat_to_label[cid]
    return label


# ---------------------------------------------------------------------------------------------
# Layout helpers


def _layout_error(title: str, root: Path, missing: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{title}: {missing} not found under {root}; expected layout: {layout}")


def _resolve_root(root: str | Path, required: Sequence[str], nests: Sequence[str], title: str, layout: str) -> Path:
    """Why: accept the dataset folder itself or a parent that holds it under its usual name."""
    base = Path(root).expanduser()
    for nest in ("", *nests):
        cand = base / nest if nest else base
        if all((cand / r).exists() for r in required):
            return cand
    if not base.is_dir():
        raise _layout_error(title, base.parent, f"folder {base.name!r}", layout)
    missing = next(r for r in required if not (base / r).exists())
    raise _layout_error(title, base, repr(missing), layout)


def _read_ids(path: Path, title: str, layout: str) -> list[str]:
    ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not ids:
        raise _layout_error(title, path.parent, f"any image id in {path.name!r} (empty)", layout)
    return ids


def _pair_by_id(root: Path, ids: Sequence[str], img_dir: str, img_suffix: str, ann_dir: str, ann_suffix: str,
                title: str, layout: str) -> list[_Item]:
    items = [_Item(i, root / img_dir / f"{i}{img_suffix}", root / ann_dir / f"{i}{ann_suffix}") for i in ids]
    _check_exist(items, root, title, layout)
    return items


def _pair_folders(root: Path, img_dir: str, img_suffix: str, ann_dir: str, ann_suffix: str, title: str,
                  layout: str) -> list[_Item]:
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
        raise _layout_error(title, top, f"any '*{img_suffix}' image", layout)
    found.sort()
    items = [_Item(i, top / f"{i}{img_suffix}", root / ann_dir / f"{i}{ann_suffix}") for i in found]
    _check_exist(items, root, title, layout, images=False)
    return items


def _check_exist(items: Sequence[_Item], root: Path, title: str, layout: str, images: bool = True) -> None:
    paths = [p for it in items for p in ((it.image, it.label) if images else (it.label,)) if p is not None]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _layout_error(title, root, f"'{missing[0].relative_to(root)}'{more}", layout)


# ---------------------------------------------------------------------------------------------
# Segmentation datasets


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
    label_modes: tuple[str, ...] = _SINGLE
    label_expected: str = "a single-channel PNG of class ids"
    label_offset: int = 0  # file id = class id + label_offset (1 where the file's 0 is "other", mmseg's reduce_zero_label)

    def __init__(self, root: Path, items: list[_Item], class_names: Sequence[str], has_background: bool,
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
        image = _read_image(item.image)
        label = self.read_label(item)
        if label.shape != image.shape[:2]:
            raise DatasetFileError(
                f"{self.name}: label {item.label or item.id} is {label.shape[1]}x{label.shape[0]} but image "
                f"{item.image} is {image.shape[1]}x{image.shape[0]}"
            )
        return SegSample(item.id, image, label)

    def read_label(self, item: _Item) -> np.ndarray:
        """Why: one label map in this dataset's class ids (int64), ignore where unlabelled."""
        assert item.label is not None
        return self.decode(_read_label_png(item.label, self.label_modes, self.label_expected))

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
        base = _resolve_root(root, ["JPEGImages", "SegmentationClass", split_file], ["VOC2012", "VOCdevkit/VOC2012"],
                             self.title, self.layout)
        ids = _read_ids(base / split_file, self.title, self.layout)
        items = _pair_by_id(base, ids, "JPEGImages", ".jpg", "SegmentationClass", ".png", self.title, self.layout)
        super().__init__(base, items, VOC_CLASSES, True, SETTINGS["voc"])


class ContextDataset(SegDataset):
    """PASCAL Context 59 + background on VOC2010 val, in mmseg's converted layout (0 = background)."""

    name, title = "context", "PASCAL Context"
    layout = ("<root>/JPEGImages/<id>.jpg, <root>/SegmentationClassContext/<id>.png (ids 0..59, 0 = background), "
              "<root>/ImageSets/SegmentationContext/val.txt (root: VOCdevkit/VOC2010 or a folder holding it)")

    def __init__(self, root: str | Path, split: str = "val") -> None:
        split_file = f"ImageSets/SegmentationContext/{split}.txt"
        base = _resolve_root(root, ["JPEGImages", "SegmentationClassContext", split_file],
                             ["VOC2010", "VOCdevkit/VOC2010"], self.title, self.layout)
        ids = _read_ids(base / split_file, self.title, self.layout)
        items = _pair_by_id(base, ids, "JPEGImages", ".jpg", "SegmentationClassContext", ".png", self.title,
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
            items = _pair_folders(base, "images/val2017", ".jpg", "annotations/val2017", "_instanceTrainIds.png",
                                  self.title, self.layout)
        elif source in ("json", "auto") and json_path.is_file():
            self.source = "json"
            items = self._load_json(base, json_path)
        else:
            if not base.is_dir():
                raise _layout_error(self.title, base.parent, f"folder {base.name!r}", self.layout)
            raise _layout_error(self.title, base, "'annotations/val2017/*_instanceTrainIds.png' or "
                                "'annotations/instances_val2017.json'", self.layout)
        super().__init__(base, items, COCO_OBJECT_CLASSES, True, SETTINGS["coco_object"])

    def _load_json(self, base: Path, json_path: Path) -> list[_Item]:
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
            raise _layout_error(self.title, base, "'val2017/' (or 'images/val2017/') image folder", self.layout)
        by_image: dict[int, list[dict]] = {}
        for a in anns:
            by_image.setdefault(a.get("image_id"), []).append(a)
        items = []
        for im in sorted(images, key=lambda r: r["file_name"]):
            sid = Path(im["file_name"]).stem
            items.append(_Item(sid, img_dir / im["file_name"], None))
            self._json[sid] = (int(im["height"]), int(im["width"]), by_image.get(im["id"], []))
        if not items:
            raise _layout_error(self.title, base, f"any image listed in {json_path.name}", self.layout)
        _check_exist(items, base, self.title, self.layout)
        return items

    def read_label(self, item: _Item) -> np.ndarray:
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
        base = _resolve_root(root, ["images/val2017", "annotations/val2017"], ["coco_stuff164k"], self.title,
                             self.layout)
        items = _pair_folders(base, "images/val2017", ".jpg", "annotations/val2017", "_labelTrainIds.png",
                              self.title, self.layout)
        super().__init__(base, items, COCO_STUFF_CLASSES, False, SETTINGS["coco_stuff"])


class CityscapesDataset(SegDataset):
    """Cityscapes val: 19 train classes, ids from ``*_gtFine_labelTrainIds.png`` (255 = void)."""

    name, title = "cityscapes", "Cityscapes"
    layout = ("<root>/leftImg8bit/val/<city>/<name>_leftImg8bit.png, "
              "<root>/gtFine/val/<city>/<name>_gtFine_labelTrainIds.png (from cityscapesscripts' createTrainIdLabelImgs)")

    def __init__(self, root: str | Path) -> None:
        base = _resolve_root(root, ["leftImg8bit/val", "gtFine/val"], ["cityscapes"], self.title, self.layout)
        items = _pair_folders(base, "leftImg8bit/val", "_leftImg8bit.png", "gtFine/val", "_gtFine_labelTrainIds.png",
                              self.title, self.layout)
        super().__init__(base, items, CITYSCAPES_CLASSES, False, SETTINGS["cityscapes"])


class ADE20KDataset(SegDataset):
    """ADE20K (SceneParsing) validation: 150 classes; 0 ("other") ignored, the rest shifted down by one."""

    name, title = "ade20k", "ADE20K"
    layout = ("<root>/images/validation/<id>.jpg, <root>/annotations/validation/<id>.png "
              "(ids 0..150, 0 = other; root: ADEChallengeData2016 or a folder holding it)")

    def __init__(self, root: str | Path) -> None:
        base = _resolve_root(root, ["images/validation", "annotations/validation"], ["ADEChallengeData2016"],
                             self.title, self.layout)
        items = _pair_folders(base, "images/validation", ".jpg", "annotations/validation", ".png", self.title,
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
        base = _resolve_root(root, ["validation", "validation-segmentation"],
                             [f"ImageNetS{subset}", f"ImageNetS/ImageNetS{subset}", f"imagenet-s/ImageNetS{subset}"],
                             self.title, self.layout)
        items = _pair_folders(base, "validation", ".JPEG", "validation-segmentation", ".png", self.title, self.layout)
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
        base = _resolve_root(root, ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation/val.txt",
                                    "class_names.txt"], ["val"], self.title, self.layout)
        names = [ln.strip() for ln in (base / "class_names.txt").read_text().splitlines() if ln.strip()]
        if len(names) < 2 or names[0] != "background":
            raise DatasetFileError(f"{base / 'class_names.txt'}: expected 'background' then the concepts, one a line")
        ids = _read_ids(base / "ImageSets/Segmentation/val.txt", self.title, self.layout)
        items = _pair_by_id(base, ids, "JPEGImages", ".jpg", "SegmentationClass", ".png", self.title, self.layout)
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
            raise _layout_error(self.title, base.parent, f"folder {base.name!r}", self.layout)
        top = base / split if (base / split).is_dir() else base
        folders = sorted(d.name for d in top.iterdir() if d.is_dir())
        items: list[tuple[str, Path, int]] = []
        for k, f in enumerate(folders):
            files = sorted(p for p in (top / f).iterdir() if p.suffix.lower() in _CLS_EXT and p.is_file())
            items.extend((f"{f}/{p.stem}", p, k) for p in files)
        if not items:
            raise _layout_error(self.title, top, "any class folder with images", self.layout)
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
        return ClsSample(sid, _read_image(path), label)


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
            raw = _read_label_png(it.label, ToyDataset.label_modes, "a single-channel PNG of class ids")
            counts = np.bincount(raw.ravel().astype(np.int64), minlength=len(src))[: len(src)]
            thing_counts = counts[thing_ids]
            if thing_counts.max() > 0:
                self.items.append((it.id, it.image, int(np.argmax(thing_counts))))
        self.skipped = len(seg.items) - len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ClsSample:
        sid, path, label = self.items[i]
        return ClsSample(sid, _read_image(path), label)
