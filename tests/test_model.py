"""GroupViT model: output shapes, hard-assignment gradients, assignment normalisation, pos-embedding resize, configs."""

import math

import pytest
import torch
import torch.nn.functional as F

from cocu_core.model import (GroupViT, GroupViTConfig, ImageFeatures, ModelConfigError, UnknownModelError, build_model,
                             compose_assignments, create_model, get_config, list_models)
from cocu_core.model.text import length_buckets, tokenize

torch.set_num_threads(1)

TINY = dict(image_size=32, patch_size=8, vision_width=32, vision_heads=2, depths=(1, 1, 1), num_group_tokens=(4, 2, 0),
            num_output_groups=(4, 2), context_length=16, text_width=32, text_layers=1, text_heads=2, proj_hidden=64,
            embed_dim=16, drop_path_rate=0.0)
EOT = 49407


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _texts(model: GroupViT, b: int, k: int) -> torch.Tensor:
    words = ["cat", "dog", "car", "tree", "boat", "house", "sky", "road"]
    caps = [f"a photo of a {words[(i + j) % len(words)]} next to a {words[(2 * i + j) % len(words)]}"
            for i in range(b) for j in range(1 + k)]
    return model.tokenize(caps).view(b, 1 + k, -1)


@pytest.fixture(scope="module")
def toy() -> GroupViT:
    torch.manual_seed(0)
    return create_model("groupvit-toy")


@pytest.mark.parametrize("name,overrides", [("groupvit-toy", {}), ("groupvit-toy", TINY)])
def test_output_shapes(name, overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    c = model.config
    b, k, groups = 3, 2, c.num_output_groups
    images, texts = _images(b, c.image_size), _texts(model, b, k)
    assert texts.shape == (b, 1 + k, c.context_length) and texts.dtype == torch.long
    model.train()
    out = model(images, texts)
    assert out["image"].shape == (b, c.embed_dim) and out["text"].shape == (b, 1 + k, c.embed_dim)
    assert torch.allclose(out["image"].norm(dim=-1), torch.ones(b), atol=1e-5)
    assert torch.allclose(out["text"].norm(dim=-1), torch.ones(b, 1 + k), atol=1e-5)
    for key in ("logit_scale", "multi_label_logit_scale"):
        assert out[key].ndim == 0 and out[key].item() == pytest.approx(1 / 0.07, rel=1e-5)
    model.eval()
    with torch.no_grad():
        feats = model.encode_image(images, return_attn=True)
        plain = model.encode_image(images)
        text = model.encode_text(texts[:, 0])
    assert isinstance(feats, ImageFeatures)
    assert feats.pooled.shape == (b, c.embed_dim) and feats.groups.shape == (b, groups[-1], c.embed_dim)
    n_patches = (c.image_size // c.patch_size) ** 2
    assert [tuple(a.shape) for a in feats.attn_soft] == [(b, groups[0], n_patches), (b, groups[1], groups[0])]
    assert [tuple(a.shape) for a in feats.attn_hard] == [(b, groups[0], n_patches), (b, groups[1], groups[0])]
    assert plain.attn_soft == [] and plain.attn_hard == []
    assert torch.allclose(plain.pooled, feats.pooled) and torch.allclose(plain.groups, feats.groups)
    assert text.shape == (b, c.embed_dim)
    assert compose_assignments(feats.attn_soft).shape == (b, groups[-1], n_patches)
    assert model.patch_grid(c.image_size, 2 * c.image_size) == (c.image_size // c.patch_size, 2 * c.image_size // c.patch_size)
    # Not normalised (evaluation normalises), and the eval forward is deterministic.
    assert not torch.allclose(feats.pooled.norm(dim=-1), torch.ones(b))
    with torch.no_grad():
        assert torch.equal(model.encode_image(images).pooled, plain.pooled)


def test_groups_project_like_pooled_in_eval(toy):
    toy.eval()
    with torch.no_grad():
        f = toy.encode_image(_images(2, 64))
        tokens, _, _ = toy.visual(_images(2, 64))
        ref_groups = toy.image_proj(tokens.reshape(-1, tokens.shape[-1])).reshape(2, -1, toy.config.embed_dim)
        ref_pooled = toy.image_proj(tokens.mean(1))
    assert torch.allclose(f.groups, ref_groups, atol=1e-6) and torch.allclose(f.pooled, ref_pooled, atol=1e-6)


def test_gradient_reaches_both_stages_through_hard_assignment(toy):
    toy.train()
    toy.zero_grad(set_to_none=True)
    out = toy(_images(4, 64, seed=1), _texts(toy, 4, 3))
    logits = out["image"] @ out["text"][:, 0].T * out["logit_scale"]
    labels = torch.arange(4)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    s1, s2 = toy.visual.stages[0], toy.visual.stages[1]
    for name, p in [("stage-1 group token", s1.group_token), ("stage-2 group token", s2.group_token),
                    ("stage-2 MixerMlp", s2.group_projector[1].fc1.weight),
                    ("stage-2 MixerMlp out", s2.group_projector[1].fc2.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The assignment queries reach the loss only through the straight-through (soft) path of the hard assignment.
    for stage in (s1, s2):
        g = stage.grouping.assign.q.weight.grad
        assert g is not None and g.abs().sum() > 0
    toy.zero_grad(set_to_none=True)


def test_train_mode_assignment_is_hard_gumbel_and_eval_is_argmax():
    torch.manual_seed(0)
    toy = create_model("groupvit-toy", gumbel=True)
    images = _images(2, 64, seed=2)
    toy.eval()
    with torch.no_grad():
        ev = toy.encode_image(images, return_attn=True)
    for soft, hard in zip(ev.attn_soft, ev.attn_hard):
        assert torch.equal(hard, F.one_hot(soft.argmax(1), soft.shape[1]).transpose(1, 2).to(hard.dtype))
    toy.train()
    torch.manual_seed(3)
    with torch.no_grad():
        tr1 = toy.encode_image(images, return_attn=True)
        tr2 = toy.encode_image(images, return_attn=True)
    toy.eval()
    for hard in tr1.attn_hard:
        assert torch.equal(hard.sum(1), torch.ones_like(hard.sum(1))) and set(hard.unique().tolist()) <= {0.0, 1.0}
    # Gumbel noise: two train passes differ, and differ from the eval argmax.
    assert not torch.equal(tr1.attn_hard[0], tr2.attn_hard[0])
    assert not torch.equal(tr1.attn_hard[0], ev.attn_hard[0])
    # The soft maps returned in train mode are plain softmaxes (no noise): equal across passes.
    assert torch.allclose(tr1.attn_soft[0], tr2.attn_soft[0], atol=1e-6)


def test_eval_assignments_sum_to_one(toy):
    toy.eval()
    with torch.no_grad():
        f = toy.encode_image(_images(3, 64, seed=4), return_attn=True)
    for soft in f.attn_soft:
        assert torch.allclose(soft.sum(1), torch.ones(soft.shape[0], soft.shape[2]), atol=1e-5)
    comp = compose_assignments(f.attn_soft)
    assert comp.shape == (3, 8, 64)
    assert torch.allclose(comp.sum(1), torch.ones(3, 64), atol=1e-5)
    assert torch.allclose(comp, torch.bmm(f.attn_soft[1], f.attn_soft[0]))
    with pytest.raises(ValueError, match="at least one stage"):
        compose_assignments([])


def test_position_embedding_interpolates_for_other_sizes(toy):
    toy.eval()
    assert toy.visual.position_embedding(8, 8) is toy.visual.pos_embed
    with torch.no_grad():
        f = toy.encode_image(_images(2, 96, seed=5), return_attn=True)
        rect = toy.encode_image(torch.randn(1, 3, 64, 96), return_attn=True)
    assert f.attn_soft[0].shape == (2, 16, 144) and f.groups.shape == (2, 8, 128)
    assert torch.allclose(compose_assignments(f.attn_soft).sum(1), torch.ones(2, 144), atol=1e-5)
    assert rect.attn_soft[0].shape == (1, 16, 8 * 12)
    pe = toy.visual.position_embedding(12, 12)
    ref = F.interpolate(toy.visual.pos_embed.reshape(1, 8, 8, -1).permute(0, 3, 1, 2), size=(12, 12), mode="bicubic",
                        align_corners=False).permute(0, 2, 3, 1).reshape(1, 144, -1)
    assert torch.equal(pe, ref)


def test_text_crop_at_eot_is_exact(toy):
    toy.eval()
    tokens = toy.tokenize(["a cat", "a very long caption about a dog running across a wide green field"])
    assert tokens.shape == (2, 32)
    text = toy.text
    with torch.no_grad():
        got = text(tokens)
        ref = _full_context_reference(text, tokens)  # the whole context, no crop
        # Tokens after the EOT cannot change the EOT state (causal attention).
        noisy = tokens.clone()
        noisy[0, 4:] = torch.randint(1, 40000, (28,))
        assert noisy[0].argmax() == tokens[0].argmax()
        got_noisy = text(noisy)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got_noisy[0], got[0], atol=1e-5)


def _full_context_reference(text, tokens):
    x = text.token_embedding(tokens) + text.positional_embedding[: tokens.shape[1]]
    for blk in text.blocks:
        x = blk(x, causal=True)
    return text.ln_final(x[torch.arange(tokens.shape[0]), tokens.argmax(-1)])


def test_length_buckets():
    lengths = torch.tensor([3, 20, 4, 3, 5, 19, 3, 4])
    plan = length_buckets(lengths)
    assert [length for _, length in plan] == [5, 20]
    assert plan[0][0].tolist() == [0, 2, 3, 4, 6, 7] and plan[1][0].tolist() == [1, 5]
    assert length_buckets(torch.tensor([7, 7, 7])) == [(None, 7)]
    assert length_buckets(torch.tensor([9, 10, 10, 8])) == [(None, 10)]  # saving too small to split


def test_text_buckets_match_full_context_forward_and_backward(toy):
    """Captions next to short (repeated) prompts: repeats are encoded once and the rest runs as two cropped
    groups; values and gradients equal the plain forward over the whole context."""
    toy.train()
    caps = ["a photo of a dog running across a wide green field on a sunny day", "a cat", "two boats"]
    prompts = ["a photo of a dog.", "itap of a cat.", "a bad photo of the boat.", "art of the tree."] * 3
    tokens = toy.tokenize(caps + prompts)
    assert torch.unique(tokens, dim=0).shape[0] == 7 and len(length_buckets(tokens.argmax(-1) + 1)) == 2
    text = toy.text
    got = text(tokens)
    w = torch.randn_like(got)
    (got * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in text.named_parameters()}
    text.zero_grad(set_to_none=True)
    ref = _full_context_reference(text, tokens)
    (ref * w).sum().backward()
    assert torch.allclose(got, ref, atol=1e-5)
    for n, p in text.named_parameters():
        assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max())), n
    text.zero_grad(set_to_none=True)
    toy.eval()


def test_tokenize_truncates_keeping_eot(toy):
    long = " ".join(["word"] * 100)
    tok = toy.tokenize([long, "a dog"])
    assert tok.shape == (2, 32)
    assert tok[0, -1].item() == EOT and tok[0, 0].item() == EOT - 1
    assert tok[1].argmax().item() == 3 and tok[1, 4:].eq(0).all()
    assert torch.equal(tokenize("a dog", 32)[0], tok[1])
    with pytest.raises(ValueError, match="exceeds the context length"):
        toy.encode_text(torch.zeros(1, 40, dtype=torch.long))


def test_init_follows_groupvit(toy):
    s1, s2 = toy.visual.stages[0], toy.visual.stages[1]
    assert s1.group_token.abs().sum() > 0 and s2.group_token.abs().sum() == 0
    assert toy.visual.stages[2].group_token is None and toy.visual.stages[2].grouping is None
    assert 0.01 < toy.visual.pos_embed.std().item() < 0.03
    assert toy.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert s2.group_projector[1].fc1.in_features == 16 and s2.group_projector[1].fc2.out_features == 8
    g = s1.grouping
    assert g.mlp_inter.fc1.out_features == 64 and g.mlp_channels.fc1.out_features == 512  # ratios (0.5, 4.0) x 128


def test_drop_path_schedule():
    model = create_model("groupvit-toy", drop_path_rate=0.1)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.visual.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 4).tolist())


def test_named_configs():
    assert {"groupvit-s", "groupvit-toy"} <= set(list_models())
    s = get_config("groupvit-s")
    assert (s.image_size, s.patch_size, s.vision_width, s.vision_heads, s.depths, s.num_group_tokens,
            s.num_output_groups, s.drop_path_rate) == (224, 16, 384, 6, (6, 3, 3), (64, 8, 0), (64, 8), 0.1)
    assert (s.text_width, s.text_layers, s.text_heads, s.context_length, s.vocab_size, s.proj_hidden,
            s.embed_dim) == (256, 12, 4, 77, 49408, 4096, 256)
    t = get_config("groupvit-toy")
    assert (t.image_size, t.patch_size, t.vision_width, t.depths, t.num_group_tokens, t.context_length,
            t.proj_hidden, t.embed_dim, t.drop_path_rate) == (64, 8, 128, (2, 1, 1), (16, 8, 0), 32, 512, 128, 0.0)


def test_config_round_trip_and_errors():
    c = get_config("groupvit-toy", drop_path_rate=0.05)
    d = c.to_dict()
    assert isinstance(d["depths"], list)
    assert GroupViTConfig.from_dict(d) == c
    torch.manual_seed(1)
    m1 = build_model(d)
    torch.manual_seed(1)
    m2 = create_model("groupvit-toy", drop_path_rate=0.05)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(ModelConfigError, match="unknown GroupViT config key"):
        GroupViTConfig.from_dict({**d, "widht": 3})
    with pytest.raises(ModelConfigError, match="unknown GroupViT config override"):
        create_model("groupvit-toy", embed=3)
    with pytest.raises(UnknownModelError, match="groupvit-toy"):
        create_model("groupvit-xl")
    with pytest.raises(ModelConfigError, match="patch_size 7 does not divide"):
        get_config("groupvit-toy", patch_size=7)
    with pytest.raises(ModelConfigError, match="num_output_groups"):
        get_config("groupvit-toy", num_output_groups=(16, 8, 8))
    with pytest.raises(ModelConfigError, match="vision_act"):
        get_config("groupvit-toy", vision_act="swish")


def test_bad_inputs_have_clear_errors(toy):
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        toy(torch.randn(2, 64, 64), torch.zeros(2, 1, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="texts must be"):
        toy(_images(2, 64), torch.zeros(3, 1, 32, dtype=torch.long))


def test_tiny_model_fits_a_batch():
    """Training through the hard assignment works: a tiny model matches 8 images to their 8 captions."""
    torch.manual_seed(0)
    model = create_model("groupvit-toy", **dict(TINY, vision_width=64, num_group_tokens=(8, 4, 0),
                                                num_output_groups=(8, 4), text_width=64, proj_hidden=128))
    images = _images(8, 32, seed=9)
    texts = _texts(model, 8, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.arange(8)
    losses = []
    for _ in range(15):
        out = model(images, texts)
        logits = out["image"] @ out["text"][:, 0].T * out["logit_scale"]
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_toy_config_trains_without_gumbel_noise(toy):
    """The toy recipe's train-mode assignment is the plain straight-through argmax: the eval assignment, still hard."""
    assert toy.config.gumbel is False
    images = _images(2, 64, seed=4)
    toy.eval()
    with torch.no_grad():
        ev = toy.encode_image(images, return_attn=True)
    toy.train()
    with torch.no_grad():
        tr = toy.encode_image(images, return_attn=True)
    toy.eval()
    for a, b in zip(ev.attn_hard, tr.attn_hard):
        assert torch.equal(a, b)
    for a, b in zip(ev.attn_soft, tr.attn_soft):
        assert torch.allclose(a, b, atol=1e-6)
