"""Optimiser and schedule: GV's decay split, linear lr scaling, and timm's CosineLRScheduler step by step."""

from __future__ import annotations

import cocu_core.compat

cocu_core.compat.ensure_torchvision()

import pytest  # noqa: E402
import torch  # noqa: E402
from timm.scheduler.cosine_lr import CosineLRScheduler  # noqa: E402

from cocu_core.config import TrainConfig  # noqa: E402
from cocu_core.train.optim import (LRSchedule, build_optimizer, build_schedule, no_decay_names, param_groups,  # noqa: E402
                                   scaled_lrs)

torch.set_num_threads(1)


class Tiny(torch.nn.Module):
    """Parameters of every kind GroupViT has: matrices, biases, norms, tokens, pos embedding, 0-d scales."""

    def __init__(self):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 8))
        self.group_token = torch.nn.Parameter(torch.zeros(1, 2, 8))
        self.proj = torch.nn.Linear(8, 8)
        self.head = torch.nn.Conv1d(8, 8, 1)
        self.norm = torch.nn.LayerNorm(8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.frozen = torch.nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def test_decay_split_is_gvs():
    m = Tiny()
    groups = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    decayed = sorted(names[id(p)] for p in groups[0]["params"])
    exempt = sorted(names[id(p)] for p in groups[1]["params"])
    # GV: only 1-d and *.bias are exempt; pos_embed, group tokens and the 0-d logit scale are decayed
    assert decayed == ["group_token", "head.weight", "logit_scale", "pos_embed", "proj.weight"]
    assert exempt == ["bn.bias", "bn.weight", "head.bias", "norm.bias", "norm.weight", "proj.bias"]
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert sorted(no_decay_names(m)) == exempt


def test_model_no_weight_decay_and_skip_are_honoured():
    m = Tiny()
    m.no_weight_decay = lambda: {"pos_embed"}
    assert "pos_embed" in no_decay_names(m) and "group_token" not in no_decay_names(m)
    assert {"pos_embed", "group_token", "logit_scale"} <= set(no_decay_names(m, skip=["group_token", "logit_scale"]))


def test_build_optimizer_scales_lrs_by_global_batch():
    cfg = TrainConfig(lr=1.6e-3, warmup_lr=4e-6, min_lr=4e-5, lr_batch_reference=4096, betas=(0.9, 0.98), eps=1e-6)
    base, warm, low = scaled_lrs(cfg, 1024)
    assert (base, warm, low) == pytest.approx((4e-4, 1e-6, 1e-5), rel=1e-12)
    opt = build_optimizer(Tiny(), cfg, 1024)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([4e-4, 4e-4])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    with pytest.raises(ValueError, match="global batch"):
        scaled_lrs(cfg, 0)


@pytest.mark.parametrize("total,warmup", [(50, 7), (40, 0), (10, 10), (1, 0), (30, 45)])
def test_schedule_equals_timm_cosine_scheduler(total, warmup):
    base, warm, low = 1.6e-3 * 0.25, 4e-6 * 0.25, 4e-5 * 0.25
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    timm_s = CosineLRScheduler(opt, t_initial=total, lr_min=low, warmup_lr_init=warm, warmup_t=warmup,
                               cycle_limit=1, t_in_epochs=False)
    ours = LRSchedule(total, warmup, base, warm, low)
    if warmup:
        assert opt.param_groups[0]["lr"] == ours.lr_at(0)  # timm sets the warm-up start at construction
    for t in range(total + 6):
        timm_s.step_update(t)
        assert ours.lr_at(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-13, abs=1e-20), t
    assert ours.lr_at(total + 100) == low


def test_schedule_shape_apply_and_state_round_trip():
    cfg = TrainConfig(epochs=3, warmup_epochs=1.0, lr_batch_reference=64)
    s = build_schedule(cfg, 64, steps_per_epoch=10)
    assert (s.total_steps, s.warmup_steps) == (30, 10)
    assert s.lr_at(0) == cfg.warmup_lr and s.lr_at(30) == cfg.min_lr
    lrs = [s.lr_at(t) for t in range(30)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warm-up rises over steps 0..9
    # warmup_prefix False (GV): the cosine is timed from step 0, so step 10 is already 3/4 of base
    assert lrs[10] == pytest.approx(cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * 1.5) and lrs[10] < lrs[9]
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))  # cosine falls
    opt = build_optimizer(Tiny(), cfg, 64)
    assert s.apply(opt, 12) == lrs[12] and all(g["lr"] == lrs[12] for g in opt.param_groups)
    other = LRSchedule(1, 0, 1.0, 0.0, 0.0)
    other.load_state_dict(s.state_dict())
    assert other == s and other.last_step == 12
    with pytest.raises(ValueError, match="unknown fields"):
        other.load_state_dict({"nope": 1})
    with pytest.raises(ValueError, match="total_steps"):
        LRSchedule(0, 0, 1.0, 0.0, 0.0)
