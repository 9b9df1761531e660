"""Reading images and label files as the benchmarks store them: palette/grey PNGs, ADE20K's reduced ids, ImageNet-S's
R + 256 G ids, COCO's polygons and RLE rasterised without pycocotools."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

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
from cocu_core.evaluation.datasets.base import IGNORE_INDEX, DatasetFileError, DatasetLayoutError


def read_image(path: Path) -> np.ndarray:
    """Why: every reader returns RGB uint8 whatever the file's mode (greyscale JPEGs exist in COCO)."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetLayoutError(f"image file disappeared: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetFileError(f"cannot read image {path}: {e}") from None


SINGLE_CHANNEL = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def read_label_png(path: Path, modes: Sequence[str], expected: str) -> np.ndarray:
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
