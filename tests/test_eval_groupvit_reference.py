"""`cocu evaluate`'s segmentation against GroupViT's own computation, label map for label map.

The reference below is written from GroupViT's `segmentation/evaluation/group_vit_seg.py`
(`GroupViTSegInference.encode_decode`, batch 1) and mmseg's `EncoderDecoder.slide_inference`, and runs
on transformers' `GroupViTModel` directly: its patch embedding with `interpolate_pos_encoding=True`,
its encoder's grouping attentions and `get_grouping_from_attentions`. Nothing here calls the project's
segmentation module. The project's side is what `cocu evaluate` runs: the Hugging Face folder loaded
by the project's checkpoint loader (the HF adapter), then `predict`.

Not vacuous: groups differ (structured random weights, see `_tiny_hf`), the images are non-square and
need several overlapping windows at a size the model was not built for, the dataset has a background
class, and at each threshold the reference predicts at least three classes while the old rule (a
constant background logit) disagrees with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cocu_core.compat import ensure_torchvision

ensure_torchvision()  # transformers' GroupViT imports torchvision
pytest.importorskip("transformers")
from transformers.models.groupvit.modeling_groupvit import get_grouping_from_attentions  # noqa: E402

from cocu_core.evaluation.segmentation import SegSettings, class_embeddings, predict  # noqa: E402
from cocu_core.train.checkpoint import load_model  # noqa: E402
from test_hf_adapter import TINY_VISION, _features, _tiny_hf  # noqa: E402

torch.set_num_threads(1)
# 8 then 4 groups, so a window can hold several classes; built for 32 px, evaluated on 48 px windows.
VISION = dict(TINY_VISION, num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4])
NAMES = ["cat", "dog", "car", "tree", "sky", "road", "boat", "bird"]  # + background at index 0
TEMPLATE = "a photo of a {}."
RESIZE = (2048, 48)  # mmseg img_scale (long max, short): the short side goes to 48
CROP, STRIDE = 48, 24
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
SHAPES = [(72, 150), (150, 90), (120, 160)]  # rescaled to 48x100 (4 windows), 80x48 (3), 48x64 (2)


def _images() -> list[np.ndarray]:
    """Rectangles of flat colours over a coloured ground, with a little noise: regions for groups to find."""
    rng = np.random.default_rng(3)
    out = []
    for h, w in SHAPES:
        img = np.zeros((h, w, 3), np.float32)
        img[:] = rng.integers(0, 256, 3)
        for _ in range(4):
            y0, x0 = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
            img[y0:y0 + rng.integers(h // 4, h // 2), x0:x0 + rng.integers(w // 4, w // 2)] = rng.integers(0, 256, 3)
        img += rng.normal(0, 8, img.shape)
        out.append(img.clip(0, 255).round().astype(np.uint8))
    return out


# ------------------------------------------------------------------ the reference (GroupViT + mmseg)


def _mmcv_rescale(h: int, w: int) -> tuple[int, int]:
    """mmcv.rescale_size with keep_ratio: the largest scale that fits (long, short) = RESIZE."""
    s = min(RESIZE[0] / max(h, w), RESIZE[1] / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


@torch.no_grad()
def _gv_encode_decode(hf, img: torch.Tensor, text: torch.Tensor, bg_thresh: float, old_rule: bool) -> torch.Tensor:
    """GroupViTSegInference.encode_decode on one window (1, 3, h, w) -> (1, 1 + n_fg, h, w)."""
    assert img.shape[0] == 1
    vm = hf.vision_model
    enc = vm.encoder(vm.embeddings(img, interpolate_pos_encoding=True), output_attentions=True, return_dict=True)
    tokens = vm.layernorm(enc.last_hidden_state)  # [1, G, C]
    attn_map = get_grouping_from_attentions(enc.attentions, tuple(img.shape[-2:]))[0].permute(1, 2, 0)  # [H, W, G]
    grouped_img_tokens = F.normalize(hf.visual_projection(tokens[0]), dim=-1)  # [G, D]
    img_avg_feat = F.normalize(hf.visual_projection(tokens.mean(dim=1)), dim=-1)  # [1, D]
    onehot_attn_map = F.one_hot(attn_map.argmax(dim=-1), num_classes=attn_map.shape[-1]).to(dtype=attn_map.dtype)
    num_fg_classes = text.shape[0]
    logit_scale = torch.clamp(hf.logit_scale.exp(), max=100)
    group_affinity_mat = (grouped_img_tokens @ text.T) * logit_scale
    pre_group_affinity_mat = F.softmax(group_affinity_mat, dim=-1)
    avg_affinity_mat = F.softmax((img_avg_feat @ text.T) * logit_scale, dim=-1)
    affinity_mask = torch.zeros_like(avg_affinity_mat)
    avg_affinity_topk = avg_affinity_mat.topk(dim=-1, k=min(5, num_fg_classes))
    affinity_mask.scatter_add_(dim=-1, index=avg_affinity_topk.indices, src=torch.ones_like(avg_affinity_topk.values))
    group_affinity_mat.masked_fill_(~affinity_mask.bool(), float("-inf"))
    group_affinity_mat = F.softmax(group_affinity_mat, dim=-1)
    group_affinity_mat *= pre_group_affinity_mat
    pred_logits = torch.zeros(num_fg_classes + 1, *attn_map.shape[:2], dtype=img.dtype)
    pred_logits[1:] = (onehot_attn_map @ group_affinity_mat).permute(2, 0, 1)
    bg = min(bg_thresh, group_affinity_mat.max().item())
    if old_rule:  # the project's rule before issue 19: a constant background logit
        pred_logits[0] = bg
    else:
        pred_logits[0, (onehot_attn_map @ group_affinity_mat).max(dim=-1).values < bg] = 1
    return pred_logits.unsqueeze(0)


@torch.no_grad()
def _gv_predict(hf, image: np.ndarray, text: torch.Tensor, bg_thresh: float, old_rule: bool = False) -> torch.Tensor:
    """mmseg test: keep-ratio resize, normalise, slide_inference (windows one by one, summed, divided by the
    count), bilinear back to the original size, argmax."""
    h0, w0 = image.shape[:2]
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=_mmcv_rescale(h0, w0), mode="bilinear", align_corners=False)
    img = (img - MEAN) / STD
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - CROP + STRIDE - 1, 0) // STRIDE + 1
    w_grids = max(w_img - CROP + STRIDE - 1, 0) // STRIDE + 1
    preds = img.new_zeros((1, text.shape[0] + 1, h_img, w_img))
    count_mat = img.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * STRIDE, w_idx * STRIDE
            y2, x2 = min(y1 + CROP, h_img), min(x1 + CROP, w_img)
            y1, x1 = max(y2 - CROP, 0), max(x2 - CROP, 0)
            crop_seg_logit = _gv_encode_decode(hf, img[:, :, y1:y2, x1:x2], text, bg_thresh, old_rule)
            preds += F.pad(crop_seg_logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert h_grids * w_grids >= 2 and (count_mat > 1).any()  # several windows, overlapping
    preds = preds / count_mat
    preds = F.interpolate(preds, size=(h0, w0), mode="bilinear", align_corners=False)
    return preds.argmax(dim=1)[0]


# ------------------------------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_seg")
    hf = _tiny_hf(seed=1, vision=VISION)
    with torch.no_grad():  # prompts that differ in one token get distinct embeddings; a trained model's scale (100)
        hf.text_model.embeddings.token_embedding.weight.normal_(0, 1)
        hf.logit_scale.fill_(float(np.log(100)))
    hf.save_pretrained(folder)
    model = load_model(folder, "cpu")  # `cocu evaluate --checkpoint <HF folder>`
    with torch.no_grad():
        tokens = model.tokenize([TEMPLATE.format(n) for n in NAMES])
        text = F.normalize(_features(hf.get_text_features(tokens)), dim=-1)
    classes = class_embeddings(model, NAMES, [TEMPLATE], torch.device("cpu"))
    return hf, model, text, classes, _images()


@pytest.mark.parametrize("bg_thresh", [0.95, 0.6, 0.3])
def test_label_maps_equal_groupvit_encode_decode(setup, bg_thresh):
    hf, model, text, classes, images = setup
    settings = SegSettings(resize_long=RESIZE[0], resize_short=RESIZE[1], crop=CROP, stride=STRIDE,
                           bg_thresh=bg_thresh, top_k=5, window_batch=4)
    ref_classes, old_differs = set(), 0
    for image in images:
        ref = _gv_predict(hf, image, text, bg_thresh)
        ours = predict(model, image, classes, settings, out_size=image.shape[:2])
        assert ours.shape == ref.shape == image.shape[:2]
        agree = (ours == ref).float().mean().item()
        assert agree == 1.0, f"{image.shape}: {100 * agree:.2f}% of pixels agree with GroupViT at {bg_thresh}"
        ref_classes |= set(ref.unique().tolist())
        old_differs += int((_gv_predict(hf, image, text, bg_thresh, old_rule=True) != ref).sum())
    assert len(ref_classes) >= 3, ref_classes
    assert 0 in ref_classes  # background is predicted somewhere
    assert old_differs > 0  # the old constant background logit would have failed this test
