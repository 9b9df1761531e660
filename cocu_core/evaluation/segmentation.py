"""Zero-shot segmentation with GroupViT, exactly as GV's `segmentation/evaluation/group_vit_seg.py` + mmseg do it.

Per window: each stage's soft assignment (plain softmax) composed across stages, resized bilinearly to
the window, one-hot of the argmax group; the final groups through the image projection, normalised,
scored against the class embeddings; `pre = softmax(groups @ classes.T * scale)`; only the top
min(k, n_fg) classes of the pooled image embedding survive a second softmax, multiplied by `pre`;
pixel logits = one-hot assignment @ affinity; background (datasets whose class 0 is background) is
GV's indicator: 1 where the pixel's best foreground score is below min(bg_thresh, max affinity), 0
elsewhere, per window. Images are resized keeping their ratio and covered by sliding windows whose
logits are averaged where they overlap (mmseg `slide_inference`), then resized back to the label's
size. ImageNet-S (the CoCu configs): an image over 1000x1000 pixels is first downsampled to long side
1000, the argmax taken at that size, and the label map resized (nearest) to the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegSettings:
    """The protocol settings of one evaluation run (dataset defaults, overridden by the config)."""

    resize_long: Optional[int]
    resize_short: Optional[int]
    crop: int
    stride: int
    bg_thresh: Optional[float]  # None: the dataset has no background class
    top_k: int = 5
    window_batch: int = 16
    downsample_large: Optional[int] = None  # ImageNet-S: images over this squared (pixels) go to long side this


@torch.no_grad()
def class_embeddings(model, class_names: Sequence[str], templates: Sequence[str], device: torch.device,
                     batch: int = 256) -> torch.Tensor:
    """Why: one normalised text embedding per class, the templates' embeddings averaged before normalising."""
    texts = [t.format(c) for c in class_names for t in templates]
    embs = []
    for i in range(0, len(texts), batch):
        embs.append(model.encode_text(model.tokenize(texts[i:i + batch]).to(device)).float())
    emb = torch.cat(embs).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


def rescale_size(h: int, w: int, long_max: Optional[int], short: Optional[int]) -> tuple[int, int]:
    """Why: mmcv's keep-ratio rescale: the largest scale with long side <= long_max and short side <= short."""
    if long_max is None and short is None:
        return h, w
    factors = []
    if long_max is not None:
        factors.append(long_max / max(h, w))
    if short is not None:
        factors.append(short / min(h, w))
    s = min(factors)
    return int(h * s + 0.5), int(w * s + 0.5)


def to_model_input(image: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Why: uint8 HxWx3 -> normalised 1x3xhxw float at the rescaled size (bilinear, like mmcv)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return (x - mean) / std


def pixel_groups(attn_soft: Sequence[torch.Tensor], grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Why: pixel -> group assignment (B, G, h, w): stages composed at token level, resized bilinearly to the window."""
    from cocu_core.model import compose_assignments

    comp = compose_assignments(list(attn_soft))  # (B, G, N)
    b, g, _ = comp.shape
    comp = comp.view(b, g, *grid)
    return F.interpolate(comp, size=size, mode="bilinear", align_corners=False)


def window_logits(model, windows: torch.Tensor, classes: torch.Tensor, settings: SegSettings,
                  return_soft: bool = False):
    """Why: GV's per-window class logits (B, C(+bg), h, w) from groups, top-k mask and double softmax."""
    feats = model.encode_image(windows, return_attn=True)
    size = tuple(windows.shape[-2:])
    soft = pixel_groups(feats.attn_soft, model.patch_grid(*size), size)  # (B, G, h, w)
    onehot = F.one_hot(soft.argmax(1), soft.shape[1]).permute(0, 3, 1, 2).to(classes.dtype)
    groups = F.normalize(feats.groups.float(), dim=-1)
    pooled = F.normalize(feats.pooled.float(), dim=-1)
    scale = model.logit_scale.exp().clamp(max=100)
    aff = groups @ classes.T * scale  # (B, G, N)
    pre = aff.softmax(-1)
    avg = (pooled @ classes.T * scale).softmax(-1)  # (B, N)
    keep = torch.zeros_like(avg, dtype=torch.bool)
    keep.scatter_(1, avg.topk(min(settings.top_k, classes.shape[0]), dim=-1).indices, True)
    aff = aff.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1) * pre
    logits = torch.einsum("bghw,bgn->bnhw", onehot, aff)
    if settings.bg_thresh is not None:
        logits = torch.cat([background_indicator(logits, aff, settings.bg_thresh), logits], dim=1)
    if return_soft:
        return logits, soft, aff
    return logits


def background_indicator(fg: torch.Tensor, aff: torch.Tensor, bg_thresh: float) -> torch.Tensor:
    """Why: GV's background channel (B, 1, h, w): 1 where a pixel's best foreground score is below
    t = min(bg_thresh, max affinity) of its window, else 0, so the best group keeps its class even when t < bg_thresh."""
    t = aff.flatten(1).max(1).values.clamp(max=bg_thresh)  # (B,), one threshold per window
    return (fg.max(1, keepdim=True).values < t.view(-1, 1, 1, 1)).to(fg.dtype)


@torch.no_grad()
def concept_maps(model, image: np.ndarray, texts: torch.Tensor, settings: SegSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Why: where each text lights up in an image (the paper's Figure 4), whatever the top-k mask keeps: each group's
    cosine similarity to the text embedding, spread to pixels by the soft assignment; also each pixel's hard group.

    ``texts`` is (K, D), normalised; returns the group map (H, W) and the maps (K, H, W) at the image's size.
    """
    device = texts.device
    h, w = image.shape[:2]
    x = to_model_input(image, rescale_size(h, w, settings.resize_long, settings.resize_short), device)
    feats = model.encode_image(x, return_attn=True)
    size = tuple(x.shape[-2:])
    soft = pixel_groups(feats.attn_soft, model.patch_grid(*size), size)
    soft = F.interpolate(soft, size=(h, w), mode="bilinear", align_corners=False)[0]  # (G, H, W)
    sim = F.normalize(feats.groups.float(), dim=-1)[0] @ texts.float().T  # (G, K)
    return soft.argmax(0), torch.einsum("ghw,gk->khw", soft, sim)


def window_boxes(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Why: mmseg's slide_inference grid: windows of `crop` every `stride`, the last one flush with the edge."""
    hc, wc = min(crop, h), min(crop, w)
    hg = max(h - hc + stride - 1, 0) // stride + 1
    wg = max(w - wc + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(hg):
        for j in range(wg):
            y2, x2 = min(i * stride + hc, h), min(j * stride + wc, w)
            boxes.append((max(y2 - hc, 0), max(x2 - wc, 0), y2, x2))
    return boxes


@torch.no_grad()
def slide_logits(model, x: torch.Tensor, classes: torch.Tensor, settings: SegSettings) -> torch.Tensor:
    """Why: class logits (C, H, W) of a whole (rescaled) image, windows batched, overlaps averaged."""
    _, _, h, w = x.shape
    boxes = window_boxes(h, w, settings.crop, settings.stride)
    n_out = classes.shape[0] + (settings.bg_thresh is not None)
    out = torch.zeros(n_out, h, w, device=x.device)
    count = torch.zeros(1, h, w, device=x.device)
    for i in range(0, len(boxes), settings.window_batch):
        chunk = boxes[i:i + settings.window_batch]
        wins = torch.cat([x[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in chunk])
        logits = window_logits(model, wins, classes, settings)
        for (y1, x1, y2, x2), lg in zip(chunk, logits):
            out[:, y1:y2, x1:x2] += lg
            count[:, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def predict(model, image: np.ndarray, classes: torch.Tensor, settings: SegSettings,
            out_size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Why: the label map (H, W) of one image at its label's size, as the protocol computes it."""
    device = classes.device
    out_size = tuple(out_size or image.shape[:2])
    small = downsample_large_image(image, settings.downsample_large)
    h, w = small.shape[:2]
    x = to_model_input(small, rescale_size(h, w, settings.resize_long, settings.resize_short), device)
    logits = slide_logits(model, x, classes, settings)
    if small is image:
        logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
        return logits.argmax(0)
    pred = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
    return F.interpolate(pred[None, None].float(), size=out_size, mode="nearest")[0, 0].long()


def downsample_large_image(image: np.ndarray, side: Optional[int]) -> np.ndarray:
    """Why: ImageNet-S's loader (CoCu's LoadImageNetSImageFromFile): an image of more than side**2 pixels goes to
    long side `side` (bilinear, uint8 as mmcv.imresize returns) before anything else; others are returned as they are."""
    h, w = image.shape[:2]
    if side is None or h * w <= side ** 2:
        return image
    size = (side, int(side * w / h)) if h > w else (int(side * h / w), side)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
