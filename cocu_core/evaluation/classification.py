"""Zero-shot classification: the pooled image embedding against class-name embeddings (top-1 / top-5)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cocu_core.compat import ensure_torchvision
from cocu_core.evaluation.segmentation import to_model_input


def center_crop_input(image: np.ndarray, size: int, crop_pct: float, device: torch.device) -> torch.Tensor:
    """Why: GroupViT's ImageNet view: torchvision Resize(size / crop_pct) on the PIL image (bilinear, antialiased
    when it shrinks: 256 for 224), then CenterCrop(size); aliasing a downscale costs top-1."""
    from PIL import Image

    ensure_torchvision()
    from torchvision import transforms as T

    view = T.Compose([T.Resize(int(size / crop_pct), interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(size)])
    return to_model_input(np.array(view(Image.fromarray(image))), (size, size), device)  # a writable copy for torch


@torch.no_grad()
def classify(model, images: Iterable[np.ndarray], classes: torch.Tensor, crop_pct: float = 0.875,
             batch: int = 64) -> torch.Tensor:
    """Why: the top-5 class indices (N, 5) of each image, by cosine of its pooled embedding with each class."""
    size = model.config.image_size
    device = classes.device
    out, buf = [], []

    def flush() -> None:
        if buf:
            feats = F.normalize(model.encode_image(torch.cat(buf)).pooled.float(), dim=-1)
            out.append((feats @ classes.T).topk(min(5, classes.shape[0]), dim=-1).indices.cpu())
            buf.clear()

    for img in images:
        buf.append(center_crop_input(img, size, crop_pct, device))
        if len(buf) == batch:
            flush()
    flush()
    return torch.cat(out) if out else torch.zeros(0, 5, dtype=torch.long)


def topk_accuracy(top5: torch.Tensor, labels: Sequence[int]) -> dict[str, float]:
    """Why: top-1 and top-5 accuracy in percent, as classification tables report them."""
    y = torch.as_tensor(list(labels), dtype=torch.long).view(-1, 1)
    if len(y) == 0:
        return {"top1": float("nan"), "top5": float("nan"), "images": 0}
    hit = top5 == y
    return {"top1": 100.0 * hit[:, :1].any(1).float().mean().item(),
            "top5": 100.0 * hit.any(1).float().mean().item(), "images": int(len(y))}
