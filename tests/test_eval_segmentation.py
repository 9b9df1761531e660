"""Zero-shot segmentation inference (GV's protocol) and the evaluation stage, on real small models and real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cocu_core.config import ToyWorldConfig, config_from_dict
from cocu_core.evaluation.segmentation import (SegSettings, background_indicator, class_embeddings,
                                               downsample_large_image, pixel_groups, predict, rescale_size,
                                               slide_logits, to_model_input, window_boxes, window_logits)
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
    # overlapping windows: each pixel is the average of the windows covering it. 48x80, crop 32, stride 16:
    # rows start at 0, 16 and columns at 0, 16, 32, 48 (mmseg's grid), 8 windows run 4 at a time
    many = slide_logits(model, x, classes, settings(crop=32, stride=16))
    assert many.shape == (len(NAMES), 48, 80)
    one = {(y, c): window_logits(model, x[:, :, y:y + 32, c:c + 32], classes, settings())[0]
           for y in (0, 16) for c in (0, 16, 32, 48)}
    assert torch.allclose(many[:, 0, 0], one[0, 0][:, 0, 0], atol=1e-6)  # a corner: one window only
    # pixel (20, 40): rows 0 and 16 x columns 16 and 32 cover it, at offsets (20|4, 24|8) in those windows
    four = (one[0, 16][:, 20, 24] + one[0, 32][:, 20, 8] + one[16, 16][:, 4, 24] + one[16, 32][:, 4, 8]) / 4
    assert torch.allclose(many[:, 20, 40], four, atol=1e-6)
    # pixel (40, 70): only the last row (16) and the last column (48) cover it
    assert torch.allclose(many[:, 40, 70], one[16, 48][:, 24, 22], atol=1e-6)
    assert not torch.allclose(one[0, 16][:, 20, 24], four, atol=1e-4)  # the windows do disagree: averaging shows


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
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.train.checkpoint import save_checkpoint

    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"model_name": "groupvit-toy", "model_config": model.config.to_dict(),
                         "model": model.state_dict()})
    preds = tmp_path / "preds"
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {
        "datasets": ["toy"], "roots": {"toy": str(toy_val)}, "panels": 2, "save_predictions": str(preds)}})
    rep = evaluate_stage(cfg, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
    seg = rep["segmentation"]["toy"]
    assert seg["images"] == 6  # the mIoU itself is recomputed from the saved prediction files below
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
    pal = np.array(im.getpalette()[:51], np.uint8).reshape(-1, 3)
    assert (pal[1:] == ds.palette[:16]).all() and pal[0].tolist() == [0, 0, 0]  # file id k+1 = class k's colour
    # the saved maps are in the toy's own label ids (1..16, 0 = background): scored against the truth PNGs as
    # they are, they give the printed mIoU
    saved = [np.asarray(Image.open(p)) for p in pngs]
    truth = [np.asarray(Image.open(ds.root / "SegmentationClass" / p.name)) for p in pngs]
    assert 1 <= min(int(x.min()) for x in saved) and max(int(x.max()) for x in saved) <= 16
    assert miou_of_files(saved, truth, 17, ignore=(0,)) == pytest.approx(seg["mIoU"], abs=1e-9)
    assert "toy" in rep["classification"] and rep["classification"]["toy"]["images"] > 0
    # the painting row: each image's top class by its pooled embedding painted over the whole image, scored by the
    # outside scorer (toy label id = class index + 1), and shown beside the model in the table
    from cocu_core.evaluation.classification import classify
    from cocu_core.evaluation.segmentation import class_embeddings
    from cocu_core.templates import get_templates

    classes = class_embeddings(model, list(ds.class_names), get_templates(cfg.eval.templates), torch.device("cpu"))
    tops = [int(classify(model, [ds[i].image], classes, crop_pct=1.0)[0, 0]) for i in range(6)]
    order = [ds.ids.index(p.stem) for p in pngs]
    painted = [np.full_like(t, tops[i] + 1) for i, t in zip(order, truth)]
    assert miou_of_files(painted, truth, 17, ignore=(0,)) == pytest.approx(seg["painting_mIoU"], abs=1e-9)
    assert "| model.pt: painting (top class over the whole image, no grouping) | " in rep["table"]
    # same checkpoint and settings: a cache hit; another template set: recomputed
    cfg2 = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"save_predictions": None})})
    assert evaluate_stage(cfg2, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)["cached"]


def miou_of_files(preds: list[np.ndarray], truths: list[np.ndarray], n: int, ignore: tuple[int, ...]) -> float:
    """mIoU (%) of raw label files against raw truth files, as an outside scorer computes it (numpy, not our metric)."""
    conf = np.zeros((n, n), np.int64)
    for p, t in zip(preds, truths):
        keep = ~np.isin(t, ignore)
        conf += np.bincount(t[keep].astype(np.int64) * n + p[keep].astype(np.int64), minlength=n * n).reshape(n, n)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    return 100 * float(np.mean(inter[union > 0] / union[union > 0]))


def _voc_fixture(root, shapes) -> None:
    from cocu_core.evaluation.pictures import save_palette_png

    rng = np.random.default_rng(5)
    ids = []
    for k, (h, w) in enumerate(shapes):
        sid = f"2007_{k:06d}"
        ids.append(sid)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(k, h, w)).save(root / "JPEGImages" / f"{sid}.jpg")
        lab = np.zeros((h, w), np.int64)
        lab[: h // 2, : w // 2] = rng.integers(1, 21)
        lab[h // 2:, w // 3:] = rng.integers(1, 21)
        lab[h // 2, :] = 255  # an object border
        save_palette_png(root / "SegmentationClass" / f"{sid}.png", lab)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")


def test_saved_voc_predictions_score_as_printed(model, tmp_path):
    """VOC layout, several windows per image, background class: the saved PNGs are VOC's own ids (0 = background)."""
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.train.checkpoint import save_checkpoint

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    _voc_fixture(voc, [(48, 80), (70, 52), (40, 40)])
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"model_name": "groupvit-toy", "model_config": model.config.to_dict(),
                         "model": model.state_dict()})
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {
        "datasets": ["voc"], "voc_root": str(tmp_path), "panels": 0, "save_predictions": str(tmp_path / "preds"),
        "resize_short": 48, "crop": 32, "stride": 16, "bg_threshold": 0.5}})
    rep = evaluate_stage(cfg, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
    seg = rep["segmentation"]["voc"]
    assert seg["settings"]["bg_thresh"] == 0.5 and seg["images"] == 3
    pngs = sorted((tmp_path / "preds" / "voc").glob("*.png"))
    saved = [np.asarray(Image.open(p)) for p in pngs]
    truth = [np.asarray(Image.open(voc / "SegmentationClass" / p.name)) for p in pngs]
    assert [x.shape for x in saved] == [x.shape for x in truth]
    assert miou_of_files(saved, truth, 21, ignore=(255,)) == pytest.approx(seg["mIoU"], abs=1e-9)


def test_bg_threshold_mapping_applies_per_dataset(tmp_path):
    from cocu_core.evaluation.datasets import get_dataset
    from cocu_core.evaluation.zero_shot import settings_for

    _voc_fixture(tmp_path / "VOC2012", [(40, 40)])
    voc = get_dataset("voc", tmp_path)
    ev = {"datasets": ["voc", "context"]}
    assert settings_for(config_from_dict({"eval": ev}), voc).bg_thresh == 0.95  # the protocol's
    cfg = config_from_dict({"eval": {**ev, "bg_threshold": {"voc": 0.7, "context": 0.2}}})
    assert settings_for(cfg, voc).bg_thresh == 0.7
    assert settings_for(config_from_dict({"eval": {**ev, "bg_threshold": {"context": 0.2}}}), voc).bg_thresh == 0.95


def test_large_images_are_downsampled_first_as_the_imagenet_s_configs(model):
    big = image(1, 1100, 1000)
    assert downsample_large_image(big, 1000).shape == (1000, 909, 3)  # long side 1000, int() of the other
    assert downsample_large_image(image(1, 1000, 1100), 1000).shape == (909, 1000, 3)
    assert downsample_large_image(image(1, 1200, 1200), 1000).shape == (1000, 1000, 3)
    for small in (image(1, 1000, 1000), image(1, 2000, 400)):  # the rule is on the area, not the long side
        assert downsample_large_image(small, 1000) is small
    classes = class_embeddings(model, NAMES, ["a photo of a {}."], torch.device("cpu"))
    s = settings(resize_long=2048, resize_short=64, crop=64, stride=32, bg_thresh=0.5, downsample_large=1000)
    pred = predict(model, big, classes, s, out_size=(1100, 1000))
    # the argmax is taken at 1000x909, then the label map goes to the truth's size by nearest (cv2's rule)
    at_small = predict(model, downsample_large_image(big, 1000), classes, settings(**{**s.__dict__, "downsample_large": None}))
    assert at_small.shape == (1000, 909)
    rows, cols = np.arange(1100) * 1000 // 1100, np.arange(1000) * 909 // 1000
    assert torch.equal(pred, at_small[rows][:, cols])


def test_imagenet_s_saved_predictions_are_rg_ids_at_the_truth_size(model, tmp_path):
    from cocu_core.evaluation.datasets import imagenet_s_ids
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.train.checkpoint import save_checkpoint

    root = tmp_path / "ImageNetS50"
    names = [("n01443537", "ILSVRC2012_val_00000001", 1100, 1000), ("n01443537", "ILSVRC2012_val_00000002", 40, 56)]
    for k, (wnid, stem, h, w) in enumerate(names):
        (root / "validation" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "validation-segmentation" / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image(k, h, w)).save(root / "validation" / wnid / f"{stem}.JPEG", format="JPEG")
        ids = np.zeros((h, w), np.int64)
        ids[h // 4:, w // 4:] = 1
        ids[:3] = 1000  # ignored
        rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "validation-segmentation" / wnid / f"{stem}.png")
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, {"model_name": "groupvit-toy", "model_config": model.config.to_dict(),
                         "model": model.state_dict()})
    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {
        "datasets": ["imagenet_s50"], "roots": {"imagenet_s50": str(tmp_path)}, "panels": 0,
        "save_predictions": str(tmp_path / "preds"), "resize_short": 64, "crop": 64, "stride": 32}})
    rep = evaluate_stage(cfg, ck, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
    seg = rep["segmentation"]["imagenet_s50"]
    assert seg["settings"]["downsample_large"] == 1000 and seg["settings"]["bg_thresh"] == 0.95
    saved, truth = [], []
    for wnid, stem, h, w in names:
        im = Image.open(tmp_path / "preds" / "imagenet_s50" / wnid / f"{stem}.png")
        assert im.mode == "RGB" and im.size == (w, h)
        saved.append(imagenet_s_ids(np.asarray(im)))
        truth.append(imagenet_s_ids(np.asarray(Image.open(root / "validation-segmentation" / wnid / f"{stem}.png"))))
    assert miou_of_files(saved, truth, 51, ignore=(1000,)) == pytest.approx(seg["mIoU"], abs=1e-9)


def ToyDatasetNames() -> list[str]:
    from cocu_core.toyworld.concepts import CLASS_NAMES

    return list(CLASS_NAMES[1:])


def test_evaluate_accepts_a_hugging_face_folder(toy_val, tmp_path):
    from cocu_core.stages.evaluate import evaluate_stage
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
    from cocu_core.stages.evaluate import evaluate_stage

    cfg = config_from_dict({"workdir": str(tmp_path / "w"), "eval": {"datasets": ["voc"],
                                                                    "voc_root": str(tmp_path / "nope")}})
    with pytest.raises(DatasetLayoutError, match="expected layout"):
        evaluate_stage(cfg, random_init=True, out_dir=tmp_path / "ev", progress=False, log=lambda m: None)
