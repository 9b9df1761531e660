"""GroupViT's two contrastive losses (GV ``models/multi_label_contrastive.py``), correct across processes.

Each process holds a local batch; features are gathered from every rank *with gradient* (the
backward pass sums each rank's gradient for a slice back onto the rank that owns it, as GV's
``diffdist.all_gather`` does), so the average of the ranks' losses and the DDP-averaged gradient
equal those of one process holding the concatenated batch. Local batches may differ in size (a
rank that skipped a corrupt image): sizes are exchanged once per step and slices padded for the
collective. Without an initialised process group every gather is the identity.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0


def _world() -> tuple[int, int]:
    """Why: one place decides whether collectives run (rank, world size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_sizes(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Why: every rank's local batch size, so gathers and label offsets work for unequal batches."""
    _, world = _world()
    if world == 1:
        return [n]
    if dist.get_backend() == "nccl" and torch.device(device).type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [int(v) for v in torch.cat(out).tolist()]


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the gathered gradient over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        big = max(sizes)
        x = x.contiguous()
        padded = x if x.shape[0] == big else torch.cat([x, x.new_zeros((big - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        lo = sum(ctx.sizes[: ctx.rank])
        return grad[lo: lo + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(x: torch.Tensor, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Why: contrast against every rank's samples while gradients still reach each sample's owner.

    ``sizes``: every rank's ``x.shape[0]`` (from :func:`batch_sizes`); exchanged here when omitted.
    Identity when torch.distributed is not initialised (or the world has one process).
    """
    rank, world = _world()
    if world == 1:
        return x
    sizes = tuple(int(s) for s in (sizes if sizes is not None else batch_sizes(x.shape[0], x.device)))
    if len(sizes) != world or sizes[rank] != x.shape[0]:
        raise ValueError(f"sizes {list(sizes)} do not match world size {world} and local batch {x.shape[0]}")
    return _GatherWithGrad.apply(x, sizes, rank)


def scale_from_param(log_scale: torch.Tensor) -> torch.Tensor:
    """Why: GV learns log(1/T) and uses clamp(exp(s), max=100) so the temperature never collapses."""
    return torch.clamp(log_scale.exp(), max=MAX_LOGIT_SCALE)


def image_text_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float,
                    sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Why: symmetric InfoNCE over the global batch: each local image/caption against all gathered ones.

    ``img``, ``txt``: (B, D) local features (normalised here too, which is a no-op on unit vectors);
    ``logit_scale``: the multiplier (already exp'd and clamped, see :func:`scale_from_param`).
    Labels are this rank's rows of the global batch: ``arange(B) + offset`` (GV: ``+ B*rank``).
    """
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    rank, _ = _world()
    sizes = list(sizes) if sizes is not None else batch_sizes(img.shape[0], img.device)
    labels = torch.arange(img.shape[0], device=img.device) + sum(sizes[:rank])
    logits_img = img @ gather_with_grad(txt, sizes).t() * logit_scale
    logits_txt = txt @ gather_with_grad(img, sizes).t() * logit_scale
    if img.shape[0] == 0:  # every sample of this rank was broken: join the collectives, add nothing
        return (logits_img.sum() + logits_txt.sum()) * 0
    return 0.5 * (F.cross_entropy(logits_img, labels) + F.cross_entropy(logits_txt, labels))


def multi_label_loss(img: torch.Tensor, prompts: torch.Tensor, logit_scale: torch.Tensor | float,
                     sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Why: every image is pulled towards all K of its own prompts (soft target 1/K) and each prompt towards its image.

    ``img`` (B, D), ``prompts`` (B, K, D). Image rows score all gathered prompts (world*B*K columns,
    target 1/K on the image's own K, so the same noun in another image is a negative); prompt rows
    score all gathered images (target: its own). GV's SoftTargetCrossEntropy both ways, averaged.
    """
    b, k, d = prompts.shape
    img, prompts = F.normalize(img, dim=-1), F.normalize(prompts, dim=-1)
    rank, _ = _world()
    sizes = list(sizes) if sizes is not None else batch_sizes(b, img.device)
    off = sum(sizes[:rank])
    flat = prompts.reshape(b * k, d)
    logits_img = img @ gather_with_grad(flat, [s * k for s in sizes]).t() * logit_scale  # (B, W*B*K)
    if b == 0:
        return logits_img.sum() * 0 + (flat @ gather_with_grad(img, sizes).t()).sum() * 0
    own = (off * k + torch.arange(b * k, device=img.device)).view(b, k)
    loss_img = -logits_img.log_softmax(dim=-1).gather(1, own).mean(dim=1).mean()
    logits_txt = flat @ gather_with_grad(img, sizes).t() * logit_scale  # (B*K, W*B)
    labels_txt = (off + torch.arange(b, device=img.device)).repeat_interleave(k)
    loss_txt = F.cross_entropy(logits_txt, labels_txt)
    return 0.5 * (loss_img + loss_txt)


def total_loss(out: dict[str, torch.Tensor], multi_label_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Why: the training objective: image-text + w x multi-label, plus the numbers the loop logs.

    ``out`` is the model's training forward: ``image`` (B, D), ``text`` (B, 1+K, D) with the caption
    first, and the temperatures as used, ``logit_scale`` / ``multi_label_logit_scale`` (already
    clamp(exp(s), 100), see :func:`scale_from_param`). With K = 0 prompts or weight 0 only the
    image-text loss is computed. Logged values: loss, image_text, logit_scale and, when computed,
    multi_label and multi_label_logit_scale.
    """
    img, text = out["image"], out["text"]
    if text.dim() != 3 or text.shape[0] != img.shape[0]:
        raise ValueError(f"out['text'] must be (B, 1+K, D) with B = {img.shape[0]}, got {tuple(text.shape)}")
    sizes = batch_sizes(img.shape[0], img.device)
    scale = out["logit_scale"]
    it = image_text_loss(img, text[:, 0], scale, sizes)
    parts = {"image_text": it, "logit_scale": torch.as_tensor(scale)}
    loss = it
    if text.shape[1] > 1 and multi_label_weight > 0:
        ml_scale = out["multi_label_logit_scale"]
        ml = multi_label_loss(img, text[:, 1:], ml_scale, sizes)
        loss = loss + multi_label_weight * ml
        parts.update(multi_label=ml, multi_label_logit_scale=torch.as_tensor(ml_scale))
    names = ["loss", *parts]
    values = torch.stack([loss.detach().double(), *(v.detach().double().reshape(()) for v in parts.values())]).tolist()
    return loss, dict(zip(names, values))
