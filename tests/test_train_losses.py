"""GroupViT losses: equal a literal per-row loop (float64), carry gradients, and are exact across 2 gloo processes."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from cocu_core.train.losses import (MAX_LOGIT_SCALE, gather_with_grad, image_text_loss, multi_label_loss,
                                    scale_from_param, total_loss)

torch.set_num_threads(1)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def _log_softmax_at(row: list[float], j: int) -> float:
    m = max(row)
    return row[j] - m - math.log(sum(math.exp(v - m) for v in row))


def loop_image_text(img: torch.Tensor, txt: torch.Tensor, scale: float, rows=None) -> float:
    """Literal: for each query row i, -log softmax of (scale * cos) at its own partner, both directions."""
    I, T = img.tolist(), txt.tolist()
    rows = list(range(len(I))) if rows is None else list(rows)
    li = [-_log_softmax_at([scale * _dot(I[i], t) for t in T], i) for i in rows]
    lt = [-_log_softmax_at([scale * _dot(T[i], x) for x in I], i) for i in rows]
    return 0.5 * (sum(li) / len(rows) + sum(lt) / len(rows))


def loop_multi_label(img: torch.Tensor, prompts: torch.Tensor, scale: float, rows=None) -> float:
    """Literal GV: image i vs all B*K prompts, target 1/K on its own K; prompt (i,k) vs all images, target i."""
    I, P = img.tolist(), prompts.tolist()
    b, k = len(P), len(P[0])
    rows = list(range(b)) if rows is None else list(rows)
    flat = [P[j][q] for j in range(b) for q in range(k)]
    loss_img = 0.0
    for i in rows:
        logits = [scale * _dot(I[i], p) for p in flat]
        loss_img += sum(-(1.0 / k) * _log_softmax_at(logits, i * k + q) for q in range(k))
    loss_txt = 0.0
    for i in rows:
        for q in range(k):
            logits = [scale * _dot(P[i][q], x) for x in I]
            loss_txt += -_log_softmax_at(logits, i)
    return 0.5 * (loss_img / len(rows) + loss_txt / (len(rows) * k))


def test_image_text_loss_equals_literal_loop():
    img, txt = _unit(6, 8, seed=0), _unit(6, 8, seed=1)
    got = image_text_loss(img, txt, 14.3)
    assert got.dtype == torch.float64
    assert abs(got.item() - loop_image_text(img, txt, 14.3)) < 1e-6
    # features are normalised inside (GV does): scaling an input changes nothing
    assert abs(image_text_loss(img * 3, txt, 14.3).item() - got.item()) < 1e-9


def test_multi_label_loss_equals_literal_loop():
    img, prompts = _unit(5, 8, seed=2), _unit(5, 3, 8, seed=3)
    got = multi_label_loss(img, prompts, 9.0)
    assert abs(got.item() - loop_multi_label(img, prompts, 9.0)) < 1e-6
    # the soft target really is 1/K on all K: permuting an image's own prompts changes nothing,
    # swapping a prompt with another image's changes the loss
    perm = prompts[:, [2, 0, 1]]
    assert abs(multi_label_loss(img, perm, 9.0).item() - got.item()) < 1e-9
    swapped = prompts.clone()
    swapped[0, 0], swapped[1, 0] = prompts[1, 0], prompts[0, 0]
    assert abs(multi_label_loss(img, swapped, 9.0).item() - got.item()) > 1e-3


def test_gradients_flow_to_features_and_logit_scales():
    img = _unit(4, 8, seed=4).requires_grad_()
    text = _unit(4, 4, 8, seed=5).requires_grad_()
    s = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    s_ml = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    loss, logs = total_loss({"image": img, "text": text, "logit_scale": scale_from_param(s),
                             "multi_label_logit_scale": scale_from_param(s_ml)}, 0.5)
    loss.backward()
    for t in (img, text, s, s_ml):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    scale = 1 / 0.07
    it = loop_image_text(img.detach(), text.detach()[:, 0], scale)
    ml = loop_multi_label(img.detach(), text.detach()[:, 1:], scale)
    assert abs(logs["image_text"] - it) < 1e-6 and abs(logs["multi_label"] - ml) < 1e-6
    assert abs(logs["loss"] - (it + 0.5 * ml)) < 1e-6 and abs(loss.item() - logs["loss"]) < 1e-9
    assert abs(logs["logit_scale"] - scale) < 1e-6


def test_logit_scale_is_clamped_at_100_and_stops_its_gradient():
    s = torch.tensor(10.0, requires_grad=True)
    assert scale_from_param(s).item() == MAX_LOGIT_SCALE
    scale_from_param(s).backward()
    assert s.grad.item() == 0.0


def test_caption_only_and_zero_weight_skip_the_multi_label_loss():
    img, text = _unit(4, 8, seed=6), _unit(4, 1, 8, seed=7)
    s = torch.tensor(2.0, dtype=torch.float64)
    loss, logs = total_loss({"image": img, "text": text, "logit_scale": s.exp()})
    assert "multi_label" not in logs and abs(loss.item() - loop_image_text(img, text[:, 0], math.exp(2.0))) < 1e-6
    with pytest.raises(ValueError, match=r"\(B, 1\+K, D\)"):
        total_loss({"image": img, "text": text[:3], "logit_scale": s.exp()})


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x


# --- two gloo processes -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, cases: list) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = []
        for img, text, split in cases:
            lo, hi = split[rank], split[rank + 1]
            x = img[lo:hi].clone().requires_grad_()
            t = text[lo:hi].clone().requires_grad_()
            s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
            s_ml = torch.tensor(2.2, dtype=torch.float64, requires_grad=True)
            loss, logs = total_loss({"image": x, "text": t, "logit_scale": scale_from_param(s),
                                     "multi_label_logit_scale": scale_from_param(s_ml)})
            loss.backward()
            results.append({"logs": logs, "gx": x.grad, "gt": t.grad, "gs": s.grad, "gs_ml": s_ml.grad,
                            "gathered": gather_with_grad(x.detach())})
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    img, text = _unit(6, 8, seed=8), _unit(6, 4, 8, seed=9)
    img2, text2 = _unit(5, 8, seed=10), _unit(5, 4, 8, seed=11)
    cases = [(img, text, [0, 3, 6]), (img2, text2, [0, 3, 5])]  # equal, then unequal local batches
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path), cases), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")

    for c, (im, tx, split) in enumerate(cases):
        a, b = r0[c], r1[c]
        torch.testing.assert_close(a["gathered"], im, rtol=0, atol=0)
        torch.testing.assert_close(b["gathered"], im, rtol=0, atol=0)
        # single process: each rank's loss is its rows of the concatenated batch against every column;
        # gradients of the summed rank losses w.r.t. each slice land on the rank that owns it
        x = im.clone().requires_grad_()
        t = tx.clone().requires_grad_()
        s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        s_ml = torch.tensor(2.2, dtype=torch.float64, requires_grad=True)
        ref_sum = 0
        for rank, res in enumerate((a, b)):
            rows = range(split[rank], split[rank + 1])
            it = loop_image_text(im, tx[:, 0], math.exp(2.5), rows)
            ml = loop_multi_label(im, tx[:, 1:], math.exp(2.2), rows)
            assert abs(res["logs"]["image_text"] - it) < 1e-6 and abs(res["logs"]["multi_label"] - ml) < 1e-6
            rows_t = torch.tensor(list(rows))
            ref_sum = ref_sum + _rows_loss(x, t, s, s_ml, rows_t)
        ref_sum.backward()
        gx = torch.cat([a["gx"], b["gx"]])
        gt = torch.cat([a["gt"], b["gt"]])
        torch.testing.assert_close(gx, x.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gt, t.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a["gs"] + b["gs"], s.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a["gs_ml"] + b["gs_ml"], s_ml.grad, rtol=1e-9, atol=1e-12)
        if split[1] * 2 == split[2]:  # equal halves: the mean of the rank losses is the concatenated batch's loss
            full, _ = total_loss({"image": im, "text": tx, "logit_scale": torch.tensor(2.5, dtype=torch.float64).exp(),
                                  "multi_label_logit_scale": torch.tensor(2.2, dtype=torch.float64).exp()})
            assert abs(0.5 * (a["logs"]["loss"] + b["logs"]["loss"]) - full.item()) < 1e-9


def _rows_loss(img, text, s, s_ml, rows):
    """The loss of some query rows against all columns, in one process (autograd reference)."""
    im, tx = F.normalize(img, dim=-1), F.normalize(text, dim=-1)
    cap, pr = tx[:, 0], tx[:, 1:]
    b, k, d = pr.shape
    sc, sc_ml = scale_from_param(s), scale_from_param(s_ml)
    li = F.cross_entropy(im[rows] @ cap.t() * sc, rows)
    lt = F.cross_entropy(cap[rows] @ im.t() * sc, rows)
    flat = pr.reshape(b * k, d)
    own = (rows[:, None] * k + torch.arange(k)[None])
    mi = -(im[rows] @ flat.t() * sc_ml).log_softmax(-1).gather(1, own).mean()
    mt = F.cross_entropy(pr[rows].reshape(-1, d) @ im.t() * sc_ml, rows.repeat_interleave(k))
    return 0.5 * (li + lt) + 0.5 * (mi + mt)
