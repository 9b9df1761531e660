"""Pictures of zero-shot segmentation: VOC-style palette PNGs and the paper's Figure-4-style panels.

A panel is one row of tiles: image | ground truth | prediction | group boundaries over the image |
one heat map per concept present in the image but missing from its caption; a title above and a
legend of the classes shown below. Drawn with PIL only (no plotting library is installed here).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cocu_core.io import write_bytes_atomic

BOUNDARY_RGB = (255, 255, 0)
PANEL_BG = (255, 255, 255)
TEXT_RGB = (20, 20, 20)


def voc_palette(n: int = 256) -> np.ndarray:
    """Why: the PASCAL VOC colour map (bit-interleaved ids), so our PNGs look like every VOC tool's."""
    if n < 1:
        raise ValueError(f"palette size must be positive, got {n}")
    ids = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), np.int64)
    for shift in range(8):  # 8 x 3 bits: unique colours for ids below 2**24
        for ch in range(3):
            pal[:, ch] |= ((ids >> (3 * shift + ch)) & 1) << (7 - shift)
    return pal.astype(np.uint8)


def _check_label_map(label_map: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D map of class ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class ids, got dtype {arr.dtype}")
    return arr


def save_palette_png(path: str | Path, label_map: np.ndarray, palette: Optional[np.ndarray] = None) -> Path:
    """Why: predictions saved as VOC does (mode P, one byte per pixel, its palette), at the map's own size."""
    arr = _check_label_map(label_map, "label_map")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise ValueError(
            f"a palette PNG holds ids 0..255; {path} would get ids {int(arr.min())}..{int(arr.max())}"
        )
    pal = voc_palette(256) if palette is None else np.asarray(palette, np.uint8)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] < 1:
        raise ValueError(f"palette must be (N, 3) uint8, got shape {pal.shape}")
    flat = np.zeros((256, 3), np.uint8)
    flat[: min(256, len(pal))] = pal[:256]
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(flat.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def save_rgb_id_png(path: str | Path, label_map: np.ndarray) -> Path:
    """Why: ids past 255 (ImageNet-S 300) saved as ImageNet-S stores its labels: R = id % 256, G = id // 256, B = 0."""
    arr = _check_label_map(label_map, "label_map")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= 1 << 16):
        raise ValueError(f"an R + 256 * G PNG holds ids 0..65535; {path} would get ids {int(arr.min())}..{int(arr.max())}")
    rgb = np.stack([arr % 256, arr // 256, np.zeros_like(arr)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def colorize(label_map: np.ndarray, palette: np.ndarray, ignore_index: Optional[int] = 255) -> np.ndarray:
    """Why: an RGB picture of a label map; ignored pixels white so they never read as a class."""
    arr = _check_label_map(label_map, "label map")
    pal = np.asarray(palette, np.uint8)
    out = pal[np.clip(arr, 0, len(pal) - 1)]
    if ignore_index is not None:
        out[arr == ignore_index] = 255
    return out


# Anchor colours of a perceptually ordered map (dark blue -> teal -> green -> yellow), viridis-like.
_HEAT_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32
)


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """Why: one activation map as colour, min-max scaled per map so weak and strong maps both show shape."""
    v = np.asarray(values, np.float32)
    finite = np.isfinite(v)
    if not finite.any():
        v = np.zeros_like(v)
    else:
        lo, hi = float(v[finite].min()), float(v[finite].max())
        v = np.where(finite, (v - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    pos = v * (len(_HEAT_ANCHORS) - 1)
    i = np.clip(np.floor(pos).astype(np.int64), 0, len(_HEAT_ANCHORS) - 2)
    t = (pos - i)[..., None]
    rgb = _HEAT_ANCHORS[i] * (1 - t) + _HEAT_ANCHORS[i + 1] * t
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def group_boundaries(groups: np.ndarray) -> np.ndarray:
    """Why: where a pixel's group differs from its right or lower neighbour: the edges of GroupViT's segments."""
    g = np.asarray(groups)
    edge = np.zeros(g.shape, bool)
    edge[:, :-1] |= g[:, :-1] != g[:, 1:]
    edge[:-1, :] |= g[:-1, :] != g[1:, :]
    return edge


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Why: every tile at one size; labels resized by nearest neighbour so ids never blend."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    if arr.ndim == 2 and not nearest:
        img = Image.fromarray(arr.astype(np.float32), mode="F")
        return np.asarray(img.resize((w, h), Image.BILINEAR))
    if arr.ndim == 2:
        idx_y = np.minimum((np.arange(h) * arr.shape[0]) // h, arr.shape[0] - 1)
        idx_x = np.minimum((np.arange(w) * arr.shape[1]) // w, arr.shape[1] - 1)
        return arr[idx_y[:, None], idx_x[None, :]]
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return int(box[2] - box[0])


def _legend_entries(class_names: Sequence[str], ids: np.ndarray, ignore_index: Optional[int]) -> list[int]:
    return [int(i) for i in np.unique(ids) if (ignore_index is None or i != ignore_index) and 0 <= i < len(class_names)]


def panel_png(
    path: str | Path,
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    groups: Optional[np.ndarray],
    activation_maps: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    palette: np.ndarray,
    title: str = "",
    ignore_index: Optional[int] = 255,
    min_tile: int = 192,
    alpha: float = 0.55,
) -> Path:
    """Why: one picture per image that shows what the model segments, how it groups, and where the
    concepts its caption never named light up (the paper's Figure 4), with a legend of class names.

    ``image`` is uint8 (H, W, 3); ``gt``/``pred`` class-id maps; ``groups`` a group id per pixel (or
    None to skip that tile); ``activation_maps`` concept name -> (h, w) scores at any resolution.
    Tiles are scaled to at least ``min_tile`` px on their short side so 64 px toy images stay legible.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    img = img.astype(np.uint8)
    gt_arr = _check_label_map(gt, "gt")
    pred_arr = _check_label_map(pred, "pred")
    h0, w0 = img.shape[:2]
    scale = max(1.0, min_tile / min(h0, w0))
    th, tw = int(round(h0 * scale)), int(round(w0 * scale))
    base = _resize(img, (th, tw), nearest=scale >= 2)

    tiles: list[tuple[str, np.ndarray]] = [("image", base)]
    tiles.append(("ground truth", colorize(_resize(gt_arr, (th, tw), True), palette, ignore_index)))
    tiles.append(("prediction", colorize(_resize(pred_arr, (th, tw), True), palette, ignore_index)))
    if groups is not None:
        g = _resize(_check_label_map(groups, "groups"), (th, tw), True)
        over = base.copy()
        over[group_boundaries(g)] = BOUNDARY_RGB
        tiles.append(("groups", over))
    for name, amap in activation_maps.items():
        a = np.asarray(amap, np.float32)
        if a.ndim != 2:
            raise ValueError(f"activation map {name!r} must be 2-D, got shape {a.shape}")
        heat = heat_rgb(_resize(a, (th, tw), nearest=False)).astype(np.float32)
        tiles.append((f"'{name}' (missing)", np.clip(alpha * heat + (1 - alpha) * base, 0, 255).astype(np.uint8)))

    font = _font(14)
    title_font = _font(16)
    pad, cap_h, title_h = 8, 20, 26 if title else 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = pad + len(tiles) * (tw + pad)

    entries = _legend_entries(class_names, np.concatenate([gt_arr.ravel(), pred_arr.ravel()]), ignore_index)
    pal = np.asarray(palette, np.uint8)
    rows: list[list[tuple[int, int]]] = [[]]
    x = pad
    for cid in entries:
        item_w = 14 + 4 + _text_width(probe, class_names[cid], font) + 12
        if rows[-1] and x + item_w > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((cid, x))
        x += item_w
    legend_h = (len(rows) * 20 + pad) if entries else 0
    height = pad + title_h + cap_h + th + pad + legend_h

    canvas = Image.new("RGB", (width, height), PANEL_BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=TEXT_RGB, font=title_font)
    top = pad + title_h
    for k, (caption, tile) in enumerate(tiles):
        x0 = pad + k * (tw + pad)
        draw.text((x0, top + 2), caption, fill=TEXT_RGB, font=font)
        canvas.paste(Image.fromarray(tile), (x0, top + cap_h))
    y = top + cap_h + th + pad
    for row in rows:
        for cid, x0 in row:
            colour = tuple(int(c) for c in pal[min(cid, len(pal) - 1)])
            draw.rectangle([x0, y + 2, x0 + 13, y + 15], fill=colour, outline=TEXT_RGB)
            draw.text((x0 + 18, y), class_names[cid], fill=TEXT_RGB, font=font)
        y += 20

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)
