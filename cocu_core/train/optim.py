"""AdamW with GroupViT's weight-decay split and its per-step warm-up + cosine learning rate (GV ``utils/``).

Weight decay: GV's ``set_weight_decay(model, {}, {})`` exempts exactly the parameters with one
dimension and those whose name ends in ``.bias``; its skip lists are empty, so the position
embedding, group tokens and the 0-d logit scales *are* decayed. A model may still name more
exemptions through a timm-style ``no_weight_decay()`` (names, or substrings of names) or the
``skip`` argument; GroupViT as published has none.

Schedule: timm's ``CosineLRScheduler(t_initial=total, lr_min, warmup_t, warmup_lr_init,
cycle_limit=1, t_in_epochs=False)`` with warmup_prefix False, as GV builds it: linear warm-up from
``warmup_lr`` over ``warmup_steps``, then ``min + (base - min)/2 (1 + cos(pi t / total))`` with t
counted from step 0 (not from the end of the warm-up), and ``min`` from ``total`` on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

import torch

from cocu_core.config import TrainConfig


def _exempt(name: str, p: torch.Tensor, skip: frozenset[str]) -> bool:
    return p.ndim == 1 or name.endswith(".bias") or any(s in name for s in skip)


def no_decay_names(model: torch.nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Why: the names the decay split exempts, so the loop can log (and a test can check) them."""
    extra = frozenset(skip) | frozenset(getattr(model, "no_weight_decay", lambda: ())())
    return [n for n, p in model.named_parameters() if p.requires_grad and _exempt(n, p, extra)]


def param_groups(model: torch.nn.Module, weight_decay: float, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Why: GV decays every weight matrix but never biases or 1-d (norm) parameters.

    Returns ``[{"params": decayed, "weight_decay": wd}, {"params": exempt, "weight_decay": 0.0}]``;
    frozen parameters are left out, as in GV.
    """
    exempt = set(no_decay_names(model, skip))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lrs(cfg: TrainConfig, global_batch: int) -> tuple[float, float, float]:
    """Why: GV's linear scaling rule: (lr, warmup_lr, min_lr) are given for `lr_batch_reference` images a step."""
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    f = global_batch / cfg.lr_batch_reference
    return cfg.lr * f, cfg.warmup_lr * f, cfg.min_lr * f


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, global_batch: int,
                    skip: Iterable[str] = ()) -> torch.optim.AdamW:
    """Why: AdamW with GV's betas/eps/decay split, at the batch-scaled base learning rate."""
    lr, _, _ = scaled_lrs(cfg, global_batch)
    # The fused kernel (CPU and CUDA) is the same update as the for-loop one, several times faster: on the toy
    # model the optimiser step was 30% of a training step (mostly the 49k-row token embedding).
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, skip), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=True)


@dataclass
class LRSchedule:
    """Per-step warm-up + cosine learning rate, numerically timm's CosineLRScheduler as GV configures it."""

    total_steps: int
    warmup_steps: int
    base: float
    warmup_lr: float
    min_lr: float
    last_step: int = -1

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def lr_at(self, step: int) -> float:
        """Why: the rate timm's ``step_update(step)`` sets; a pure function of the step, so resume is exact."""
        if step < self.warmup_steps:
            return self.warmup_lr + step * ((self.base - self.warmup_lr) / self.warmup_steps)
        if step >= self.total_steps:
            return self.min_lr
        return self.min_lr + 0.5 * (self.base - self.min_lr) * (1 + math.cos(math.pi * step / self.total_steps))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Why: set every parameter group's rate for `step` (call before ``optimizer.step()``); returns it."""
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        """Why: checkpoints record the schedule with the optimiser."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Why: resume continues the saved schedule, as timm's load_state_dict restores its fields."""
        unknown = set(state) - set(asdict(self))
        if unknown:
            raise ValueError(f"not an LRSchedule state: unknown fields {sorted(unknown)}")
        for k, v in state.items():
            setattr(self, k, v)
        self.__post_init__()


def build_schedule(cfg: TrainConfig, global_batch: int, steps_per_epoch: int,
                   epochs: Optional[float] = None) -> LRSchedule:
    """Why: GV's step counts: total = int(epochs x steps/epoch), warm-up = int(warmup_epochs x steps/epoch)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    base, warm, low = scaled_lrs(cfg, global_batch)
    total = int((cfg.epochs if epochs is None else epochs) * steps_per_epoch)
    return LRSchedule(total_steps=max(1, total), warmup_steps=int(cfg.warmup_epochs * steps_per_epoch),
                      base=base, warmup_lr=warm, min_lr=low)
