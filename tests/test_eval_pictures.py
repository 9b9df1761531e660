"""Palette PNGs and Figure-4-style panels, read back from disk."""

import numpy as np
import pytest
from PIL import Image

from cocu_core.config import ToyWorldConfig
from cocu_core.evaluation.datasets import get_dataset
from cocu_core.evaluation.pictures import colorize, group_boundaries, heat_rgb, panel_png, save_palette_png, voc_palette
from cocu_core.toyworld import generate_split


def test_voc_palette_known_colours():
    p = voc_palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    assert p[0].tolist() == [0, 0, 0] and p[1].tolist() == [128, 0, 0] and p[15].tolist() == [192, 128, 128]
    assert p[255].tolist() == [224, 224, 192]  # VOC's border colour
    big = voc_palette(1001)
    assert (big[:256] == p).all() and len({tuple(c) for c in big}) == 1001


def test_palette_png_has_palette_size_and_values(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 21, (37, 53))
    lab[:3] = 255
    out = save_palette_png(tmp_path / "preds" / "2007_000033.png", lab)
    with Image.open(out) as im:
        assert im.mode == "P" and im.size == (53, 37)
        np.testing.assert_array_equal(np.asarray(im), lab)
        pal = np.array(im.getpalette()[: 256 * 3], np.uint8).reshape(256, 3)
    np.testing.assert_array_equal(pal, voc_palette())
    assert [p.name for p in (tmp_path / "preds").iterdir()] == ["2007_000033.png"]  # no temp file left behind


def test_palette_png_refuses_ids_a_byte_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        save_palette_png(tmp_path / "x.png", np.full((4, 4), 300))
    with pytest.raises(ValueError, match="integer"):
        save_palette_png(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "x.png").exists()


def test_helpers():
    g = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    np.testing.assert_array_equal(
        group_boundaries(g), [[False, True, False], [True, True, True], [False, False, False]]
    )
    h = heat_rgb(np.array([[0.0, 1.0], [2.0, np.nan]]))
    assert h.shape == (2, 2, 3) and h.dtype == np.uint8
    assert h[0, 0].tolist() == [68, 1, 84] and h[1, 0].tolist() == [253, 231, 37]  # low dark, high bright
    c = colorize(np.array([[1, 255]]), voc_palette())
    assert c[0, 0].tolist() == [128, 0, 0] and c[0, 1].tolist() == [255, 255, 255]


def test_panel_png_from_a_toy_sample(tmp_path):
    generate_split(tmp_path, "val", 2, ToyWorldConfig(n_web=0, n_train=0, n_val=2, seed=1), workers=1)
    ds = get_dataset("toy", tmp_path / "val")
    s = ds[0]
    pred = s.label.copy()
    pred[:10] = 0
    groups = (np.arange(64)[:, None] // 16) * 4 + np.arange(64)[None, :] // 16
    maps = {"sky": np.random.default_rng(0).random((8, 8)), "grass": np.linspace(0, 1, 64 * 64).reshape(64, 64)}
    out = panel_png(tmp_path / "panels" / f"{s.id}.png", s.image, s.label, pred, groups, maps, ds.class_names,
                    ds.palette, title=f"toy {s.id}: caption misses sky, grass")
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.mode == "RGB"
        arr = np.asarray(im)
    # 6 tiles of 192 px (64 px scaled x3) with 8 px gaps; legend below them
    assert arr.shape[1] == 8 + 6 * (192 + 8) and arr.shape[0] > 192 + 40
    # the ground-truth tile shows the palette colour of the class at its centre
    top = 8 + 26 + 20
    cy, cx = top + 96, 8 + 200 + 96
    assert arr[cy, cx].tolist() == ds.palette[s.label[32, 32]].tolist()
    # the groups tile draws boundaries in yellow along the 16 px grid (48 px once scaled)
    gx = 8 + 3 * 200
    assert arr[top + 20, gx + 47].tolist() == [255, 255, 0]


def test_panel_rejects_bad_shapes(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    lab = np.zeros((8, 8), np.int64)
    with pytest.raises(ValueError, match="image must be"):
        panel_png(tmp_path / "p.png", img[..., 0], lab, lab, None, {}, ["a"], voc_palette())
    with pytest.raises(ValueError, match="activation map 'a'"):
        panel_png(tmp_path / "p.png", img, lab, lab, None, {"a": np.zeros(3)}, ["a"], voc_palette())
