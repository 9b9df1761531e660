"""Dataset readers on small folders in each benchmark's real layout (names, sub-folders, label encodings)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cocu_core.config import EVAL_DATASETS, ToyWorldConfig
from cocu_core.evaluation.datasets import (COCO_OBJECT_CLASSES, COCO_THING_IDS, DATASETS, ClassificationFolder,
                                           DatasetFileError, DatasetLayoutError, ProtocolSettings, SegDataset,
                                           SegSample, ToyClassification, decode_rle_counts, rle_mask, get_dataset)
from cocu_core.evaluation.pictures import voc_palette
from cocu_core.templates import FULL_80, SIMPLE, SUBSET_7, get_templates
from cocu_core.toyworld import generate_split
from cocu_core.toyworld.concepts import BY_ID, CLASS_NAMES

RNG = np.random.default_rng(0)


def _jpg(path: Path, h: int, w: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def _png_l(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def _png_p(path: Path, arr: np.ndarray) -> None:
    """A VOC-style label: palette PNG whose pixel values are class indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(voc_palette(256).ravel().tolist())
    im.save(path)


def _labels(h, w, hi, extra=()):
    lab = RNG.integers(0, hi, (h, w))
    for v in extra:
        lab[RNG.random((h, w)) < 0.1] = v
    return lab


def _check(ds: SegDataset, sample: SegSample, expected: np.ndarray) -> None:
    assert sample.image.dtype == np.uint8 and sample.image.shape == expected.shape + (3,)
    assert sample.label.dtype == np.int64
    np.testing.assert_array_equal(sample.label, expected)
    valid = sample.label != ds.ignore_index
    assert ((sample.label[valid] >= 0) & (sample.label[valid] < ds.n_classes)).all()
    assert ds.label_to_image_size and ds.palette.dtype == np.uint8 and ds.palette.shape[1] == 3


# ---------------------------------------------------------------------------------------------- VOC


def test_voc_palette_pngs_and_nested_root(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    labs = {}
    for sid, (h, w) in {"2007_000033": (14, 20), "2007_000042": (10, 8)}.items():
        _jpg(root / "JPEGImages" / f"{sid}.jpg", h, w)
        labs[sid] = _labels(h, w, 21, extra=(255,))
        _png_p(root / "SegmentationClass" / f"{sid}.png", labs[sid])
    _png_p(root / "SegmentationClass" / "2007_009999.png", _labels(3, 3, 21))  # not in val.txt
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000042\n2007_000033\n")

    ds = get_dataset("voc", tmp_path)  # the folder holding VOCdevkit is accepted
    assert ds.root == root and len(ds) == 2 and ds.ids == ["2007_000042", "2007_000033"]  # val.txt order
    assert ds.n_classes == 21 and ds.has_background and ds.class_names[0] == "background"
    assert ds.class_names[11] == "table" and ds.class_names[16] == "plant" and ds.class_names[20] == "monitor"
    # GV `segmentation/configs/_base_/datasets/pascal_voc12.py`: resize (2048, 448), slide 448 / 224, bg_thresh 0.95
    assert ds.settings == ProtocolSettings(2048, 448, 448, 224, 0.95) and ds.ignore_index == 255
    for i in range(2):
        s = ds[i]
        _check(ds, s, labs[s.id])


def test_voc_colour_label_is_refused_with_its_name(tmp_path):
    root = tmp_path / "VOC2012"
    _jpg(root / "JPEGImages/a.jpg", 6, 6)
    (root / "SegmentationClass").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "SegmentationClass/a.png")  # colour-coded RGB
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    ds = get_dataset("voc", root)
    with pytest.raises(DatasetFileError, match=r"a\.png.*palette PNG.*mode RGB"):
        ds[0]


def test_missing_label_file_is_named(tmp_path):
    root = tmp_path / "VOC2012"
    for sid in ("a", "b"):
        _jpg(root / f"JPEGImages/{sid}.jpg", 6, 6)
    _png_p(root / "SegmentationClass/a.png", np.zeros((6, 6)))
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    with pytest.raises(DatasetLayoutError, match=r"SegmentationClass/b\.png.*expected layout"):
        get_dataset("voc", root)


def test_image_label_size_mismatch_is_clear(tmp_path):
    root = tmp_path / "VOC2012"
    _jpg(root / "JPEGImages/a.jpg", 6, 8)
    _png_p(root / "SegmentationClass/a.png", np.zeros((6, 6)))
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\n")
    with pytest.raises(DatasetFileError, match="6x6 but image .*8x6"):
        get_dataset("voc", root)[0]


# ------------------------------------------------------------------------------------------ Context


def test_context_mmseg_converted_layout(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2010"
    lab = _labels(9, 13, 60)
    _jpg(root / "JPEGImages/2008_000002.jpg", 9, 13)
    _png_l(root / "SegmentationClassContext/2008_000002.png", lab)
    (root / "ImageSets/SegmentationContext").mkdir(parents=True)
    (root / "ImageSets/SegmentationContext/val.txt").write_text("2008_000002\n")
    ds = get_dataset("context", tmp_path / "VOCdevkit")
    assert ds.n_classes == 60 and ds.class_names[1] == "airplane" and ds.class_names[55] == "monitor"
    assert ds.settings.bg_thresh == 0.35  # GV `pascal_context.py`: 0.35 (not VOC's 0.95)
    _check(ds, ds[0], lab)


# --------------------------------------------------------------------------------------------- COCO


def test_coco_object_converted_pngs(tmp_path):
    lab = _labels(11, 15, 81)
    _jpg(tmp_path / "images/val2017/000000000139.jpg", 11, 15)
    _png_l(tmp_path / "annotations/val2017/000000000139_instanceTrainIds.png", lab)
    ds = get_dataset("coco_object", tmp_path)
    assert ds.source == "png" and ds.ids == ["000000000139"] and ds.n_classes == 81
    assert ds.class_names[1] == "person" and ds.class_names[80] == "toothbrush"
    _check(ds, ds[0], lab)


def _coco_categories():
    names = COCO_OBJECT_CLASSES[1:]
    return [{"id": cid, "name": n, "supercategory": "x"} for cid, n in zip(COCO_THING_IDS, names)]


def test_coco_object_from_instance_json_polygons_and_rle(tmp_path):
    # image 1 (20x30): person rectangle polygon, a two-part toothbrush drawn later over it, a crowd RLE.
    # image 2 (7x9): a dog as pycocotools' compressed RLE string.
    crowd = np.zeros((20, 30), bool)
    crowd[15:20, 0:4] = True
    flat = crowd.T.ravel()  # COCO runs are column-major, starting with 0s
    change = np.flatnonzero(np.diff(flat.astype(int))) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    assert not flat[0]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [[2.0, 3.0, 12.0, 3.0, 12.0, 10.0, 2.0, 10.0]]},
        {"id": 2, "image_id": 1, "category_id": 90, "iscrowd": 0,
         "segmentation": [[10.0, 5.0, 20.0, 5.0, 20.0, 8.0, 10.0, 8.0], [25.0, 0.0, 29.0, 0.0, 29.0, 2.0, 25.0, 2.0]]},
        {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": {"counts": runs, "size": [20, 30]}},
        {"id": 4, "image_id": 2, "category_id": 18, "iscrowd": 0,
         "segmentation": {"counts": "01>3E00000c0M", "size": [7, 9]}},
    ]
    data = {
        "images": [{"id": 2, "file_name": "000000000632.jpg", "height": 7, "width": 9},
                   {"id": 1, "file_name": "000000000139.jpg", "height": 20, "width": 30}],
        "annotations": anns,
        "categories": _coco_categories(),
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_val2017.json").write_text(json.dumps(data))
    _jpg(tmp_path / "val2017/000000000139.jpg", 20, 30)
    _jpg(tmp_path / "val2017/000000000632.jpg", 7, 9)

    ds = get_dataset("coco_object", tmp_path)
    assert ds.source == "json" and ds.ids == ["000000000139", "000000000632"]
    want = np.zeros((20, 30), np.int64)
    want[3:10, 2:12] = 1  # polygon corners on pixel edges: exactly the covered pixels, as pycocotools
    want[5:8, 10:20] = 80  # toothbrush (COCO id 90 -> 80) painted over the person
    want[0:2, 25:29] = 80
    _check(ds, ds[0], want)  # crowd region stays background
    dog = np.zeros((7, 9), np.int64)  # the mask pycocotools encoded as "01>3E00000c0M"
    dog[1:5, 2:6] = 1
    dog[6, 8] = 1
    dog[0, 0] = 1
    _check(ds, ds[1], dog * 17)  # COCO id 18 (dog) -> 17: id 12 is unused, so ids after it shift
    assert ds.class_names[17] == "dog"

    ign = get_dataset("coco_object", tmp_path, crowd="ignore")
    assert (ign[0].label[crowd] == 255).all() and (ign[0].label[~crowd] == want[~crowd]).all()


def test_rle_string_decoder_matches_pycocotools():
    # pycocotools.mask.encode of this 6x8 mask; its run deltas go negative, which exercises the sign bit.
    rows = ["00011111", "10011000", "10010101", "00100101", "01110110", "10110001"]
    mask = np.array([[c == "1" for c in r] for r in rows])
    np.testing.assert_array_equal(rle_mask({"counts": "122O2005MN3MM20N20N0010O", "size": [6, 8]}, 6, 8), mask)
    assert decode_rle_counts("01>3E00000c0M")[:4] == [0, 1, 14, 4]  # col 0: 0 zeros, 1 one; then 6 + 7 + 1 zeros
    with pytest.raises(DatasetFileError, match="counts sum"):
        rle_mask({"counts": [3, 4], "size": [6, 8]}, 6, 8)


def test_coco_stuff_label_train_ids(tmp_path):
    root = tmp_path / "coco_stuff164k"
    lab = _labels(12, 10, 171, extra=(255,))
    _jpg(root / "images/val2017/000000000285.jpg", 12, 10)
    _png_l(root / "annotations/val2017/000000000285_labelTrainIds.png", lab)
    _png_l(root / "annotations/val2017/000000000285.png", lab)  # the raw map beside it is not read
    ds = get_dataset("coco_stuff", tmp_path)
    assert ds.n_classes == 171 and not ds.has_background and ds.settings.bg_thresh is None
    assert ds.settings == ProtocolSettings(2048, 512, 224, 112, None)
    _check(ds, ds[0], lab)


# -------------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_label_train_ids_in_city_folders(tmp_path):
    labs = {}
    for city, name in [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")]:
        labs[f"{city}/{name}"] = lab = _labels(8, 16, 19, extra=(255,))
        _jpg(tmp_path / f"leftImg8bit/val/{city}/{name}_leftImg8bit.png", 8, 16, fmt="PNG")
        _png_l(tmp_path / f"gtFine/val/{city}/{name}_gtFine_labelTrainIds.png", lab)
        _png_l(tmp_path / f"gtFine/val/{city}/{name}_gtFine_labelIds.png", lab + 7)  # not read
    ds = get_dataset("cityscapes", tmp_path)
    assert ds.ids == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
    assert ds.n_classes == 19 and ds.class_names[18] == "bicycle" and ds.settings.resize_short == 1024
    for i in range(2):
        _check(ds, ds[i], labs[ds[i].id])


# ------------------------------------------------------------------------------------------- ADE20K


def test_ade20k_zero_label_reduced(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = _labels(9, 11, 151)
    raw[0, :3] = [0, 1, 150]
    _jpg(root / "images/validation/ADE_val_00000001.jpg", 9, 11)
    _png_l(root / "annotations/validation/ADE_val_00000001.png", raw)
    ds = get_dataset("ade20k", tmp_path)
    want = np.where(raw == 0, 255, raw - 1)
    _check(ds, ds[0], want)
    assert list(ds[0].label[0, :3]) == [255, 0, 149]
    assert ds.n_classes == 150 and ds.class_names[0] == "wall" and ds.class_names[7] == "bed"


# -------------------------------------------------------------------------------------- ImageNet-S


def _rg_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path)


@pytest.mark.parametrize("subset", [50, 300])
def test_imagenet_s_rg_encoding(tmp_path, subset):
    root = tmp_path / "ImageNetS" / f"ImageNetS{subset}"
    ids = RNG.integers(0, subset + 1, (10, 12))
    ids[0, :4] = [0, 1000, subset, 1]
    _jpg(root / "validation/n01443537/ILSVRC2012_val_00004677.JPEG", 10, 12)
    _rg_png(root / "validation-segmentation/n01443537/ILSVRC2012_val_00004677.png", ids)
    ds = get_dataset(f"imagenet_s{subset}", tmp_path)
    assert ds.ids == ["n01443537/ILSVRC2012_val_00004677"] and ds.n_classes == subset + 1
    assert ds.class_names[0] == "background" and ds.class_names[1] in ("goldfish", "tench")
    assert ds.ignore_index == 1000 and len(ds.palette) >= 1001  # the CoCu configs' ignore index, both subsets
    _check(ds, ds[0], ids)
    # the CoCu authors' ImageNet-S configs (xing0047/rewrite `segmentation/configs/_base_/datasets/`): bg_thresh 0.95
    # for 50 classes, 0.75 for 300 (../shared/GROUPVIT_PROTOCOL.md's table)
    assert ds.settings.bg_thresh == (0.95 if subset == 50 else 0.75) and ds.settings.downsample_large == 1000


# ---------------------------------------------------------------------------------------------- toy


@pytest.fixture(scope="module")
def toy_val(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    generate_split(out, "val", 12, ToyWorldConfig(n_web=0, n_train=0, n_val=12, seed=4), workers=1)
    return out / "val"


def test_toy_val_split(toy_val):
    ds = get_dataset("toy", toy_val.parent)  # the world folder is accepted too
    assert len(ds) == 12 and not ds.has_background and ds.settings.bg_thresh is None
    assert ds.class_names == list(CLASS_NAMES[1:])
    assert ds.settings == ProtocolSettings(64, 64, 64, 64, None)
    assert ds.palette[0].tolist() == [128, 0, 0] and ds.palette[255].tolist() == [224, 224, 192]  # no black class
    for i in range(len(ds)):
        s = ds[i]
        raw = np.asarray(Image.open(toy_val / f"SegmentationClass/{s.id}.png"))
        assert (raw > 0).all()  # the renderer leaves no background pixel: why the toy has no background class
        _check(ds, s, raw.astype(np.int64) - 1)


def test_toy_classification_is_largest_thing(toy_val):
    cls = ToyClassification(toy_val)
    assert cls.class_names == [c.name for c in BY_ID.values() if c.kind == "thing"]
    assert len(cls) + cls.skipped == 12 and len(cls) > 0
    for i in range(len(cls)):
        s = cls[i]
        raw = np.asarray(Image.open(toy_val / f"SegmentationClass/{s.id}.png"))
        things = {BY_ID[v].name: int((raw == v).sum()) for v in np.unique(raw) if BY_ID[v].kind == "thing"}
        assert cls.class_names[s.label] == max(things, key=lambda n: (things[n], -CLASS_NAMES.index(n)))
        assert s.image.shape == (64, 64, 3)


# ----------------------------------------------------------------------------------- classification


def test_classification_folder_names(tmp_path):
    for wnid, k in [("n01443537", 2), ("n01440764", 1)]:
        for j in range(k):
            _jpg(tmp_path / f"val/{wnid}/ILSVRC2012_val_0000000{j}.JPEG", 8, 8)
    ds = ClassificationFolder(tmp_path)
    assert ds.class_names == ["tench", "goldfish"] and len(ds) == 3  # wnid folders get CLIP's names, sorted order
    assert [ds[i].label for i in range(3)] == [0, 1, 1]
    (tmp_path / "class_names.txt").write_text("tench\ngoldfish\n")
    assert ClassificationFolder(tmp_path).class_names == ["tench", "goldfish"]
    (tmp_path / "class_names.txt").write_text("n01443537\tgoldfish\nn01440764\ttench\n")
    assert ClassificationFolder(tmp_path).class_names == ["tench", "goldfish"]
    (tmp_path / "class_names.txt").write_text("tench\n")
    with pytest.raises(DatasetFileError, match="1 names for 2 class folders"):
        ClassificationFolder(tmp_path)
    with pytest.raises(DatasetLayoutError, match="expected layout"):
        ClassificationFolder(tmp_path / "nowhere")


def test_imagenet_wnid_folders_get_clips_names(tmp_path):
    import open_clip

    wnids = ["n15075141", "n01440764", "n02085620", "n04589890"]  # toilet tissue, tench, chihuahua, window screen
    for w in wnids:
        _jpg(tmp_path / f"val/{w}/ILSVRC2012_val_{w}.JPEG", 8, 8)
    ds = ClassificationFolder(tmp_path)
    names = list(open_clip.IMAGENET_CLASSNAMES)
    assert ds.class_names == [names[0], names[151], names[904], names[999]]  # ImageNet indices of the sorted wnids
    assert ds.class_names == ["tench", "Chihuahua", "window screen", "toilet paper"]


@pytest.mark.parametrize("folder", ["cats", "n99999999"])
def test_folder_neither_wnid_nor_named_is_one_line_error(tmp_path, folder):
    for f in ("n01440764", folder):
        _jpg(tmp_path / f"val/{f}/a.JPEG", 8, 8)
    with pytest.raises(DatasetFileError, match=f"class folder\\(s\\) \\['{folder}'\\] are not ImageNet-1k") as e:
        ClassificationFolder(tmp_path)
    assert "\n" not in str(e.value) and "class_names.txt" in str(e.value)


def test_classification_view_is_antialiased_resize_then_centre_crop():
    import torch
    import torch.nn.functional as F

    from cocu_core.evaluation.classification import center_crop_input

    noise = np.random.default_rng(1).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    x = center_crop_input(noise, 224, 0.875, torch.device("cpu"))
    assert x.shape == (1, 3, 224, 224)
    # short side 600 -> 256 (Resize(256)): a shrink by 2.3, averaged over the pixels it covers, not sampled
    aliased = F.interpolate(torch.from_numpy(noise).permute(2, 0, 1)[None].float(), size=(256, 341), mode="bilinear")
    assert x.std() < 0.5 * (aliased / 255 / 0.226).std()


# -------------------------------------------------------------------------------- missing folders


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_or_empty_folder_shows_expected_layout(tmp_path, name):
    for root in (tmp_path / "does_not_exist", tmp_path):
        with pytest.raises(DatasetLayoutError) as e:
            get_dataset(name, root)
        msg = str(e.value)
        assert "\n" not in msg and "expected layout: <root>/" in msg and str(root.name) in msg
    assert isinstance(e.value, FileNotFoundError)


def test_registry_matches_config_and_templates():
    from cocu_core.config import BACKGROUND_DATASETS
    from cocu_core.evaluation.datasets import SETTINGS

    assert tuple(DATASETS) == EVAL_DATASETS
    # the config's list (which refuses one threshold for several of them) is the datasets with a background threshold
    assert set(BACKGROUND_DATASETS) == {d for d, s in SETTINGS.items() if s.bg_thresh is not None}
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("pascal", "/tmp")
    assert len(FULL_80) == len(set(FULL_80)) == 80 and len(SUBSET_7) == 7 and SIMPLE == ("a photo of a {}.",)
    assert set(SUBSET_7) <= set(FULL_80) and get_templates("subset7") is SUBSET_7
    assert all(t.count("{}") == 1 for t in FULL_80)
    with pytest.raises(ValueError, match="unknown template set"):
        get_templates("full")


def test_settings_override_keeps_defaults_and_background_rule():
    s = ProtocolSettings(2048, 448, 448, 224, 0.95)
    assert s.override(crop=224, bg_thresh=0.5) == ProtocolSettings(2048, 448, 224, 224, 0.5)
    assert s.override() == s
    no_bg = ProtocolSettings(2048, 512, 224, 112, None)
    assert no_bg.override(bg_thresh=0.9).bg_thresh is None  # no background class appears by configuration
