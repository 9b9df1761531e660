"""Hugging Face adapter: parity with a random transformers GroupViTModel, exact export round trip, bad folders."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from cocu_core.model import compose_assignments, create_model, get_config
from cocu_core.model.hf_adapter import (HFGroupViTError, config_from_hf, export_hf, hf_keys_for, hf_state_dict,
                                        load_hf_groupvit)

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")
from transformers import GroupViTConfig as HFConfig  # noqa: E402
from transformers import GroupViTModel  # noqa: E402
from transformers.models.groupvit.modeling_groupvit import get_grouping_from_attentions  # noqa: E402

TOL = 1e-4
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=16)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, depths=[1, 1, 1], num_hidden_layers=3,
                   num_group_tokens=[4, 2, 0], num_output_groups=[4, 2, 2], num_attention_heads=2, image_size=32,
                   patch_size=8)
CAPTIONS = ["a cat", "two dogs on the grass", "a red car parked by a tree"]


def _tiny_hf(seed: int = 0, vision: dict = TINY_VISION) -> GroupViTModel:
    """A random tiny HF GroupViT; HF's zero group tokens / pos embed, unit norms and small weights are
    re-drawn so grouping is not degenerate (HF's init gives near-uniform assignments) and every tensor matters."""
    torch.manual_seed(seed)
    hf = GroupViTModel(HFConfig(text_config=TINY_TEXT, vision_config=vision, projection_dim=16,
                                projection_intermediate_dim=64))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name.endswith(("group_token", "position_embeddings")):
                p.normal_(0, 0.5)
            elif p.ndim == 2 and "embedding" not in name:
                p.normal_(0, p.shape[1] ** -0.5)  # O(1) activations, so assignments are far from uniform
        for name, b in hf.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return hf.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tiny")
    _tiny_hf().save_pretrained(folder)
    return folder


def _inputs(model):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    return images, model.tokenize(CAPTIONS)


def _features(x):
    """Why: transformers 4 returns the projected features as a tensor, transformers 5 as an output object."""
    return x if isinstance(x, torch.Tensor) else x.pooler_output


def _hf_outputs(hf, images, tokens):
    with torch.no_grad():
        o = hf(input_ids=tokens, pixel_values=images, output_attentions=True)
        return dict(img=_features(hf.get_image_features(images)), txt=_features(hf.get_text_features(tokens)),
                    logits=o.logits_per_image,
                    grouping=get_grouping_from_attentions(o.vision_model_output.attentions, (4, 4)),
                    stages=o.vision_model_output.attentions)


def _our_outputs(model, images, tokens):
    model.eval()
    with torch.no_grad():
        f = model.encode_image(images, return_attn=True)
        out = model(images, tokens)
        logits = out["image"] @ out["text"][:, 0].T * out["logit_scale"]
        return dict(img=f.pooled, txt=model.encode_text(tokens), logits=logits,
                    grouping=compose_assignments(f.attn_soft).reshape(3, -1, 4, 4), stages=f.attn_soft)


def _assert_close(ours, ref):
    for key in ("img", "txt", "logits", "grouping"):
        assert ours[key].shape == ref[key].shape, key
        assert (ours[key] - ref[key]).abs().max().item() < TOL, key
    for a, b in zip(ours["stages"], ref["stages"]):
        assert (a - b).abs().max().item() < TOL


def test_config_from_hf_defaults_is_groupvit_s():
    ours, s = config_from_hf(HFConfig()), get_config("groupvit-s")
    skip = {"name", "drop_path_rate", "logit_scale_init"}
    assert {k: v for k, v in ours.to_dict().items() if k not in skip} == \
        {k: v for k, v in s.to_dict().items() if k not in skip}
    assert ours.drop_path_rate == 0.0 and ours.logit_scale_init == pytest.approx(s.logit_scale_init, abs=1e-4)


def test_parity_with_transformers(hf_folder):
    hf = GroupViTModel.from_pretrained(hf_folder).eval()
    model = load_hf_groupvit(hf_folder)
    assert not model.training
    images, tokens = _inputs(model)
    ours, ref = _our_outputs(model, images, tokens), _hf_outputs(hf, images, tokens)
    _assert_close(ours, ref)
    # The grouping is not degenerate: several groups win pixels in the composed map.
    assert ours["grouping"].argmax(1).unique().numel() > 1 and ours["grouping"].max() > 0.6


def test_gradient_parity_in_eval_mode(hf_folder):
    """Same loss, same gradients on every tensor (mapped to HF names): the backward pass matches too."""
    hf = GroupViTModel.from_pretrained(hf_folder).eval()
    model = load_hf_groupvit(hf_folder)
    images, tokens = _inputs(model)
    hf(input_ids=tokens, pixel_values=images, return_loss=True).loss.backward()
    out = model(images, tokens)
    logits = out["image"] @ out["text"][:, 0].T * out["logit_scale"]
    labels = torch.arange(3)
    ((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2).backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    checked = 0
    for name, p in model.named_parameters():
        if name == "multi_label_logit_scale":
            continue
        names = hf_keys_for(name)
        ref = torch.cat([hf_grads[n] for n in names], dim=0) if len(names) > 1 else hf_grads[names[0]]
        assert torch.allclose(p.grad, ref, atol=1e-5, rtol=1e-3), name
        checked += len(names)
    assert checked == len(hf_grads)


def test_export_round_trip_is_exact(hf_folder, tmp_path):
    model = load_hf_groupvit(hf_folder)
    with torch.no_grad():
        model.multi_label_logit_scale.fill_(1.234)
    export_hf(model, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    again = load_hf_groupvit(tmp_path / "export")
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == model.config
    # transformers reads our export and computes what the original HF model computes, bit for bit.
    images, tokens = _inputs(model)
    orig = _hf_outputs(GroupViTModel.from_pretrained(hf_folder).eval(), images, tokens)
    back = _hf_outputs(GroupViTModel.from_pretrained(tmp_path / "export").eval(), images, tokens)
    for key in ("img", "txt", "logits", "grouping"):
        assert torch.equal(orig[key], back[key]), key


def test_export_of_our_model_runs_in_transformers(tmp_path):
    torch.manual_seed(3)
    model = create_model("groupvit-toy", image_size=32, patch_size=8, vision_width=32, vision_heads=2,
                         depths=(1, 1, 1), num_group_tokens=(4, 2, 0), num_output_groups=(4, 2), context_length=16,
                         text_width=32, text_layers=2, text_heads=2, proj_hidden=64, embed_dim=16,
                         drop_path_rate=0.1, name="tiny-ours").eval()
    export_hf(model, tmp_path)
    hf = GroupViTModel.from_pretrained(tmp_path).eval()
    images, tokens = _inputs(model)
    _assert_close(_our_outputs(model, images, tokens), _hf_outputs(hf, images, tokens))
    back = load_hf_groupvit(tmp_path)
    assert back.config == model.config  # name and drop-path survive in config.json's cocu_* keys
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), back.state_dict().values()))
    assert set(hf_state_dict(model)) == set(hf.state_dict()) - {"text_model.embeddings.position_ids"}


def test_pytorch_bin_folder_loads(tmp_path):
    hf = _tiny_hf(seed=1)
    hf.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file()
    model = load_hf_groupvit(tmp_path)
    images, tokens = _inputs(model)
    _assert_close(_our_outputs(model, images, tokens), _hf_outputs(hf, images, tokens))


def test_bad_folders(hf_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_hf_groupvit(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_groupvit(empty)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(HFGroupViTError, match="model_type is 'clip', expected 'groupvit'"):
        load_hf_groupvit(clip)
    (clip / "config.json").write_text("{not json")
    with pytest.raises(HFGroupViTError, match="not valid JSON"):
        load_hf_groupvit(clip)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(hf_folder / "config.json", no_weights / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_hf_groupvit(no_weights)
    # Weights that do not fit the config: the error names the tensor.
    wrong = tmp_path / "wrong"
    shutil.copytree(hf_folder, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["projection_dim"] = 8
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFGroupViTError, match="visual_projection.3.weight has shape"):
        load_hf_groupvit(wrong)
    (wrong / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HFGroupViTError, match="cannot read weights"):
        load_hf_groupvit(wrong)


def test_config_traps():
    vision = dict(TINY_VISION, num_output_groups=[3, 2, 2])
    with pytest.raises(HFGroupViTError, match=r"num_output_groups\[0\]=3 must equal num_group_tokens\[0\]=4"):
        config_from_hf(HFConfig(text_config=TINY_TEXT, vision_config=vision))
    with pytest.raises(HFGroupViTError, match="not a GroupViT config"):
        config_from_hf(transformers.CLIPConfig())
    model = create_model("groupvit-toy", num_output_groups=(12, 8))
    with pytest.raises(HFGroupViTError, match="cannot export"):
        export_hf(model, "/nonexistent/never-written")
