"""Zero-shot segmentation inference (GV's protocol) and the evaluation stage, on real small models and real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cocu_core.config import ToyWorldConfig, config_from_dict
from cocu_core.evaluation.segmentation import (
    SegSettings, background_indicator, class_embeddings, pixel_groups, predict, rescale_size, slide_logits,
    to_model_input, window_boxes, window_logits,
)
from cocu_core.model import create_model

torch.set_num_threads(1)
TINY = {"vision_width": 64, "vision_heads": 2, "text_width": 64, "text_heads": 2, "proj_hidden": 128, "embed_dim": 64}
NAMES = ["sky", "grass", "water", "sand", "car", "tree"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("groupvit-toy", **TINY).eval()


def settings(**kw) -> SegSettings:
    base = dict(resize_long=None, resize_short=None, crop=64, stride=64, bg_thresh=None, top_k=5, window_batch=4)
    return SegSettings(**{**base, **kw})


def image(seed: int = 0, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_composed_assignment_sums_to_one_per_pixel(model):
    x = to_model_input(image(), (64, 64), torch.device("cpu"))
    feats = model.encode_image(x, return_attn=True)
    soft = pixel_groups(feats.attn_soft, model.patch_grid(64, 64), (64, 64))
    assert soft.shape == (1, model.config.num_output_groups[-1], 64, 64)
    assert torch.allclose(soft.sum(1), torch.ones(1, 64, 64), atol=1e-5)


def test_background_is_groupvits_indicator_per_window():
    # two windows, three groups, four classes; pixels (2 x 3) assigned to groups 0, 1, 2 / 0, 1, 2 and 2, 2, 2 / 2, 2, 1
    aff = torch.tensor([[[0.50, 0.10, 0.0, 0.0], [0.0, 0.30, 0.05, 0.0], [0.0, 0.0, 0.20, 0.10]],
                        [[0.90, 0.0, 0.0, 0.0], [0.0, 0.0, 0.40, 0.0], [0.0, 0.0, 0.0, 0.70]]])
    groups = torch.tensor([[[0, 1, 2], [0, 1, 2]], [[2, 2, 2], [2, 2, 1]]])
    onehot = F.one_hot(groups, 3).permute(0, 3, 1, 2).float()
    fg = torch.einsum("bghw,bgn->bnhw", onehot, aff)
    # 0.95 > every max affinity: t is each window's own max (0.5, 0.9); its best group stays foreground,
    # even where no pixel takes it (window 2: group 0 wins no pixel, so all its pixels are background)
    bg = background_indicator(fg, aff, 0.95)[:, 0]
    assert bg.tolist() == [[[0, 1, 1], [0, 1, 1]], [[1, 1, 1], [1, 1, 1]]]
    # t = 0.25: scores 0.5 and 0.3 stay, 0.2 goes; window 2's 0.7 and 0.4 stay
    assert background_indicator(fg, aff, 0.25)[:, 0].tolist() == [[[0, 0, 1], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]]]
    assert background_indicator(fg, aff, 0.0).sum() == 0


def test_background_threshold_zero_predicts_no_background(model):
    classes = class_embeddings(model, NAMES, ["a photo of a {}."], torch.device("cpu"))
    for seed in range(3):
        no_bg = predict(model, image(seed), classes, settings(bg_thresh=0.0))
        assert (no_bg != 0).all() and int(no_bg.max()) <= len(NAMES)
        logits = window_logits(model, to_model_input(image(seed), (64, 64), torch.device("cpu")), classes,
                               settings(bg_thresh=1.0))
        assert set(logits[:, 0].unique().tolist()) <= {0.0, 1.0}  # the background channel is 0/1


def test_top_k_mask_limits_the_classes_an_image_can_take(model):
    classes = class_embeddings(model, NAMES, ["a photo of a {}."], torch.device("cpu"))
    for seed in range(3):
        assert len(torch.unique(predict(model, image(seed), classes, settings(top_k=2)))) <= 2


def test_sliding_window_equals_whole_image_when_the_window_covers_it(model):
    classes = class_embeddings(model, NAMES, ["a photo of a {}."], torch.device("cpu"))
    x = to_model_input(image(3, 48, 80), (48, 80), torch.device("cpu"))
    whole = window_logits(model, x, classes, settings(bg_thresh=0.5))[0]
    slid = slide_logits(model, x, classes, settings(bg_thresh=0.5, crop=96, stride=64))
    assert torch.allclose(whole, slid, atol=1e-6)
    # overlapping windows: every pixel is covered, and the result is the average of the windows covering it
    many = slide_logits(model, x, classes, settings(crop=32, stride=16))
    assert many.shape == (len(NAMES), 48, 80) and torch.isfinite(many).all()


def test_window_grid_and_rescale_follow_mmseg():
    # mmseg slide_inference on 500x375 with crop 448 / stride 224 -> 2x1 grid, last window flush with the edge
    assert window_boxes(500, 375, 448, 224) == [(0, 0, 448, 375), (52, 0, 500, 375)]
    assert window_boxes(64, 64, 448, 224) == [(0, 0, 64, 64)]
    assert len(window_boxes(448, 1000, 448, 224)) == 4
    assert rescale_size(375, 500, 2048, 448) == (448, 597)  # short side to 448
    assert rescale_size(100, 4000, 2048, 448) == (51, 2048)  # long side capped at 2048
    assert rescale_size(64, 64, None, None) == (64, 64)


@pytest.fixture(scope="module")
def toy_val(tmp_path_factory):
    from cocu_core.toyworld.generate import generate_split

    root = tmp_path_factory.mktemp("toyeval")
    generate_split(root / "val", "val", 6, ToyWorldConfig(n_web=0, n_train=0, n_val=6, seed=2), workers=1)
    return root / "val"


def test_evaluate_stage_writes_table_panels_and_palette_predictions(model, toy_val, tmp_path):
    from cocu_core.evaluation.stage import evaluate_stage
    from cocu_core.train.checkpoint import save_checkpoint

    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"model_name": "groupvit-toy", "model_config": model.config.to_dict(),
                         "model": model.state_dict()})
    preds = tmp_path / "preds"
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {
        "datasets": ["toy"], "roots": {"toy": str(toy_val)}, "panels": 2, "save_predictions": str(preds)}})
    rep = evaluate_stage(cfg, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
    seg = rep["segmentation"]["toy"]
    assert seg["images"] == 6 and 0 <= seg["mIoU"] <= 100
    assert set(seg["per_class_iou"]) == set(ToyDatasetNames())
    assert "| model | toy | avg |" in rep["table"]
    for f in ("results.json", "table.md", "per_class_iou.md", "report.md", "manifest.json"):
        assert (tmp_path / "ev" / f).is_file()
    panels = sorted((tmp_path / "ev" / "panels").glob("*.png"))
    assert len(panels) == 2 and all(Image.open(p).format == "PNG" for p in panels)
    pngs = sorted((preds / "toy").glob("*.png"))
    assert len(pngs) == 6
    im = Image.open(pngs[0])
    assert im.mode == "P" and im.size == (64, 64)
    from cocu_core.evaluation.datasets import get_dataset

    ds = get_dataset("toy", toy_val)
    pal = np.array(im.getpalette()[:48], np.uint8).reshape(-1, 3)
    assert (pal == ds.palette[:16]).all()
    assert "toy" in rep["classification"] and rep["classification"]["toy"]["images"] > 0
    # same checkpoint and settings: a cache hit; another template set: recomputed
    cfg2 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"save_predictions": None})})
    assert evaluate_stage(cfg2, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)["cached"]


def ToyDatasetNames() -> list[str]:
    from cocu_core.toyworld.concepts import CLASS_NAMES

    return list(CLASS_NAMES[1:])


def test_evaluate_accepts_a_hugging_face_folder(toy_val, tmp_path):
    from cocu_core.evaluation.stage import evaluate_stage
    from cocu_core.model.hf_adapter import export_hf

    torch.manual_seed(1)
    m = create_model("groupvit-toy", **TINY).eval()
    export_hf(m, tmp_path / "hf")
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {
        "datasets": ["toy"], "roots": {"toy": str(toy_val)}, "panels": 0, "max_images": 2}})
    rep = evaluate_stage(cfg, tmp_path / "hf", out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
    assert rep["segmentation"]["toy"]["images"] == 2


def test_missing_dataset_folder_is_one_clear_error(tmp_path):
    from cocu_core.evaluation.datasets import DatasetLayoutError
    from cocu_core.evaluation.stage import evaluate_stage

    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {"datasets": ["voc"],
                                                                    "voc_root": str(tmp_path / "nope")}})
    with pytest.raises(DatasetLayoutError, match="expected layout"):
        evaluate_stage(cfg, random_init=True, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
