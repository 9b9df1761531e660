"""Curation encoder: tiny open_clip training, loading, text encoding, retrieval report, clear weight errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ingest_fixtures import small_config
from cocu_core.config import ConfigError
from cocu_core.encoder.load import load_encoder, resolve_weights
from cocu_core.encoder.report import retrieval_recall
from cocu_core.encoder.train import holdout_split, load_web_pairs, train_toy_encoder

ROOT = Path(__file__).resolve().parent.parent
# `python -m cocu_core.cli` would run a second copy of the module that plugins do not register into.
CLI = [sys.executable, "-c", "import sys; from cocu_core.cli import main; sys.exit(main())"]


def test_retrieval_recall_counts_distinct_captions():
    caps = ["a dog", "a cat", "a dog", "a car"]
    emb = {"a cat": [1, 0, 0], "a car": [0, 1, 0], "a dog": [0, 0, 1]}
    img = np.array([emb[c] for c in caps], np.float32)
    rep = retrieval_recall(img, caps, lambda cs: np.array([emb[c] for c in cs], np.float32))
    assert rep["r@1"] == 1.0 and rep["n_distinct_captions"] == 3 and rep["chance_r@1"] == pytest.approx(1 / 3)
    wrong = retrieval_recall(img[[1, 0, 1, 0]], caps, lambda cs: np.array([emb[c] for c in cs], np.float32))
    assert wrong["r@1"] == 0.0 and wrong["r@5"] == 1.0  # only 3 distinct captions: top-5 holds them all
    with pytest.raises(ValueError):
        retrieval_recall(img[:2], caps, lambda cs: np.zeros((len(cs), 3)))


def test_holdout_is_fixed_and_disjoint():
    a, b = holdout_split(100, 10, 0)
    a2, b2 = holdout_split(100, 10, 0)
    assert (a == a2).all() and (b == b2).all() and len(b) == 10 and not set(a) & set(b)
    with pytest.raises(ValueError, match="encoder.holdout"):
        holdout_split(10, 10, 0)


@pytest.mark.parametrize("tower", ["resnet", "vit"])
def test_train_tiny_encoder_load_and_cache(world_dir, tmp_path, tower):
    cfg = small_config(tmp_path, encoder={"toy_vision": tower})
    enc_dir = tmp_path / "encoder"
    m = train_toy_encoder(cfg, world_dir / "web", enc_dir, progress=False)
    assert not m["cached"] and m["counts"]["train_pairs"] == 350 and m["counts"]["holdout_pairs"] == 50
    rep = m["report"]
    assert rep["final_loss"] < rep["first_loss"]
    assert (enc_dir / "cocu-tiny.pt").is_file() and (enc_dir / "cocu-tiny.json").is_file()
    again = train_toy_encoder(cfg, world_dir / "web", enc_dir, progress=False)
    assert again["cached"] and again["cache_key"] == m["cache_key"]

    enc = load_encoder(cfg, enc_dir)
    model, preprocess, tokenizer, clip_model = enc  # unpacks as the documented 4-tuple
    assert clip_model == f"open_clip:cocu-tiny/{(enc_dir / 'cocu-tiny.pt').resolve()}"
    assert type(model.visual).__name__ == {"resnet": "ModifiedResNet", "vit": "VisionTransformer"}[tower]
    t = enc.encode_text(["a red ball", "a tree", "a red ball"])
    assert t.dtype == np.float32 and t.shape == (3, 64)
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5) and np.allclose(t[0], t[2]) and not np.allclose(t[0], t[1])
    from PIL import Image

    im = enc.encode_images([Image.open(next((world_dir / "web" / "images").glob("*.jpg")))])
    assert im.shape == (1, 64) and abs(np.linalg.norm(im) - 1) < 1e-5
    # the report's R@1/R@5 are those of the saved weights: recomputed here from the held-out files (numpy ranks)
    paths, captions = load_web_pairs(world_dir / "web")
    _, ho = holdout_split(len(paths), cfg.encoder.holdout, cfg.seed)
    ho_caps = [captions[i] for i in ho]
    uniq = sorted(set(ho_caps))
    sims = enc.encode_images([Image.open(paths[i]) for i in ho]) @ enc.encode_text(uniq).T
    true = sims[np.arange(len(ho)), [uniq.index(c) for c in ho_caps]]
    better = (sims > true[:, None] + 1e-6).sum(1)  # captions strictly closer than the true one
    for k in (1, 5):
        assert abs(rep[f"r@{k}"] - float(np.mean(better < k))) <= 1 / len(ho), (k, rep)

    changed = small_config(tmp_path, encoder={"toy_vision": tower, "epochs": 1})
    from cocu_core.io import stage_is_current
    from cocu_core.encoder.train import ENCODER_FIELDS, web_fingerprint

    assert not stage_is_current(enc_dir, web_fingerprint(world_dir / "web"), changed.fields_for(ENCODER_FIELDS))


def test_weight_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="cocu encoder-report"):
        resolve_weights(small_config(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_weights(small_config(tmp_path, encoder={"pretrained": str(tmp_path / "missing.pt")}))
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        resolve_weights(small_config(tmp_path, encoder={"model": "ViT-Nope"}))
    with pytest.raises(ConfigError, match="not a known tag"):
        resolve_weights(small_config(tmp_path, encoder={"model": "ViT-B-16", "pretrained": "nonsense"}))


def test_vit_b16_openai_missing_offline_is_one_clear_line(tmp_path):
    out = subprocess.run(
        [*CLI, "encoder-report", "-c", str(ROOT / "configs" / "toy.yaml"),
         "--set", f"workdir={tmp_path}", "--set", "encoder.model=ViT-B-16", "--set", "encoder.pretrained=openai",
         "--set", f"encoder.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith("error: pretrained weights ViT-B-16/openai are not available locally")
    assert "encoder.pretrained: /path/to/weights" in err and "Traceback" not in out.stderr


def test_batchnorm_recalibration_makes_eval_mode_match_training_statistics():
    import torch

    from cocu_core.encoder.train import recalibrate_batchnorm

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))

        def encode_image(self, x):
            return self.net(x)

    torch.manual_seed(0)
    model = Tower().eval()
    x = torch.randn(512, 4) * 5 + 3  # far from the fresh running stats (mean 0, var 1)
    with torch.no_grad():
        model.train()
        batch_stats = model.encode_image(x)
        model.eval()
        before = model.encode_image(x)
    assert (before - batch_stats).abs().max() > 0.5
    assert recalibrate_batchnorm(model, x, batch_size=64) == 1
    assert not model.training and model.net[1].momentum == 0.1
    with torch.no_grad():
        after = model.encode_image(x)
    assert (after - batch_stats).abs().max() < 0.05  # per-batch averages of 64, not one batch of 512


def test_class_ranking_hand_worked():
    from cocu_core.encoder.report import class_ranking

    sims = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.3, 0.4]])
    present = np.array([[1, 0, 0, 1], [0, 0, 1, 1]], bool)
    r = class_ranking(sims, present, k=2)
    # image 0: top 2 = classes 0, 2 -> 1 hit of 2 present; image 1: top 2 = 3, 2 -> 2 hits of 2
    assert r["p@2"] == pytest.approx(0.75) and r["r@2"] == pytest.approx(0.75) and r["chance_p@2"] == 0.5
    with pytest.raises(ValueError, match="matching"):
        class_ranking(sims, present[:1])
