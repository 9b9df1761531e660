"""The real-data code path end to end, outside the toy world: `configs/cc3m.yaml` with a real open_clip ViT-B-32
(random weights saved to a file, given as `encoder.pretrained`) at 224 px; 60 pairs of 256 px JPEGs with everyday
captions served over loopback from a url list in CC3M's TSV layout; download -> embed -> index -> vocabulary ->
concepts -> curate -> train (groupvit-s, two steps) -> evaluate on a PASCAL-VOC-layout folder (21 classes,
background threshold). Stage functions are called directly (the Prefect flow is tested elsewhere)."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_scale import ADJECTIVES, PATTERNS, PREPOSITIONS, TOPICS, VERBS  # noqa: E402

from cocu_core.compat import ensure_torchvision  # noqa: E402
from cocu_core.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_PAIRS = 60  # 2 shards of 30: every path (sharding, embedding rows, curation, training, evaluation) is kept
pytestmark = pytest.mark.slow


def _pairs(folder: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Why: 256 px JPEGs of coloured shapes with sentences like a web caption's ('a small dog next to the bench')."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    topics = list(TOPICS.items())
    (folder / "img").mkdir(parents=True)
    out = []
    for i in range(n):
        im = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = (int(v) for v in rng.integers(0, 200, 2))
            box = [x0, y0, x0 + int(rng.integers(20, 56)), y0 + int(rng.integers(20, 56))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        im.save(folder / "img" / f"{i:04d}.jpg", quality=90)
        t, words = topics[int(rng.integers(len(topics)))]
        n1, n2 = (words[int(j)] for j in rng.choice(len(words), 2, replace=False))
        cap = PATTERNS[int(rng.integers(len(PATTERNS)))].format(
            a1=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))], a2=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
            n1=n1, n2=n2, v=VERBS[int(rng.integers(len(VERBS)))], p=PREPOSITIONS[int(rng.integers(len(PREPOSITIONS)))],
            t=t)
        out.append((f"img/{i:04d}.jpg", cap[0].upper() + cap[1:] + "."))
    return out


def _voc(root: Path) -> Path:
    """Why: PASCAL VOC 2012's layout (JPEGImages, palette SegmentationClass PNGs with 255 borders, val list)."""
    from PIL import Image

    from cocu_core.evaluation.datasets import VOC_CLASSES
    from cocu_core.evaluation.pictures import voc_palette

    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    ids = ["2007_000032", "2007_000039"]
    for k, sid in enumerate(ids):
        h, w = (180, 240) if k == 0 else (240, 180)
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        lab[40:120, 50:150] = 12 if k == 0 else 15  # a dog, a person
        lab[39, 50:150] = 255  # object border, ignored
        img[lab == 12] = (200, 150, 90)
        Image.fromarray(img).save(root / "JPEGImages" / f"{sid}.jpg")
        p = Image.fromarray(lab, mode="P")
        p.putpalette(voc_palette(256).ravel().tolist())
        p.save(root / "SegmentationClass" / f"{sid}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    (root / "class_names.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    return root


def test_cc3m_config_validates_and_names_the_real_path():
    cfg = load_config(ROOT / "configs" / "cc3m.yaml")
    assert cfg.data.source == "url_list" and cfg.data.input_format == "tsv" and cfg.data.image_size == 224
    assert cfg.encoder.model == "ViT-B-16" and cfg.encoder.pretrained == "openai" and not cfg.encoder.train_toy
    assert cfg.train.model == "groupvit-s" and "voc" in cfg.eval.datasets
    assert cfg.index.index_key is None and cfg.runtime.task_runner == "threads"


def test_real_encoder_path_from_a_cc3m_style_list_to_a_voc_score(tmp_path):
    import torch

    torch.set_num_threads(1)
    ensure_torchvision()
    import open_clip

    from cocu_core.curation import ArchiveReader
    from cocu_core.curation.data import load_curation_data, shard_names
    from cocu_core.layout import stage_dir
    from cocu_core.stages.concepts import concepts_stage
    from cocu_core.stages.curate import curate_shard_stage, curation_upstream_fp
    from cocu_core.stages.vocabulary import vocabulary_stage
    from cocu_core.stages.download import download_stage
    from cocu_core.stages.embed import embed_stage
    from cocu_core.embeddings.store import load_embeddings
    from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, load_encoder, resolve_weights
    from cocu_core.stages.evaluate import evaluate_stage
    from cocu_core.stages.index import index_stage
    from cocu_core.index import load_index
    from cocu_core.toyworld import serve_directory
    from cocu_core.stages.train import train_stage

    import time

    t0 = [time.time()]

    def lap(what: str) -> None:  # where the minutes go, printed for CI logs (no timing assertion)
        print(f"{what}: {time.time() - t0[0]:.1f}s", flush=True)
        t0[0] = time.time()

    torch.manual_seed(0)
    weights = tmp_path / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), weights)
    src = tmp_path / "web"
    pairs = _pairs(src, N_PAIRS)
    voc = _voc(tmp_path / "VOCdevkit" / "VOC2012")
    with serve_directory(src) as srv:
        tsv = tmp_path / "cc3m" / "Train_GCC-training.tsv"
        tsv.parent.mkdir()
        # CC3M's file is caption<TAB>url with no header; img2dataset's instructions add the header line first.
        tsv.write_text("caption\turl\n" + "".join(f"{c}\t{srv.base_url}/{f}\n" for f, c in pairs))
        cfg = load_config(ROOT / "configs" / "cc3m.yaml", {
            "workdir": str(tmp_path / "run"),
            "data": {"url_list": str(tsv), "shard_size": 30, "processes": 1, "threads": 8, "retries": 0},
            "index": {"max_index_memory_usage": "1G", "current_memory_available": "2G", "recall_sample": 50},
            # num_workers stays cc3m.yaml's 8: clip-retrieval must not hang with more loader workers than tars
            "encoder": {"model": "ViT-B-32", "pretrained": str(weights), "inference_batch_size": 25,
                        "templates": ["a photo of a {}."]},
            "curation": {"batch_size": 64, "vocab_size": 60},
            "train": {"batch_size": 4, "max_steps": 2, "epochs": 1, "processes": 1, "threads": 1,
                      "checkpoint_every": 1, "device": "cpu"},
            "eval": {"datasets": ["voc"], "voc_root": str(voc), "class_names": None, "imagenet_root": None,
                     "panels": 1, "device": "cpu", "window_batch": 2, "save_predictions": str(tmp_path / "preds")},
        })
        w = cfg.workpath
        dl = download_stage(cfg.data.url_list, w / "download", cfg, progress=False)
    assert dl["success"] == N_PAIRS and dl["n_shards"] == 2
    lap("fixtures + download")

    arch, ckpt = resolve_weights(cfg)
    assert (arch, ckpt) == ("ViT-B-32", weights.resolve())
    enc_id = encoder_fingerprint(cfg)
    emb = embed_stage(w / "download", w / "embed", cfg, clip_model_string(arch, ckpt), enc_id, [], progress=False)
    assert emb["embedded"] == N_PAIRS and emb["dim"] == 512
    lap("embed")
    img, txt, meta = load_embeddings(w / "embed")
    # row i is the encoder's embedding of the 224 px image and caption stored under key i (open_clip's preprocessing)
    enc = load_encoder(cfg)
    keys = meta.column("key").to_pylist()
    by_key = {}
    for tar in sorted((w / "download" / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                k, ext = m.name.split(".", 1)
                by_key.setdefault(k, {})[ext] = tf.extractfile(m).read()
    from PIL import Image

    rows = [0, 17, 45, 59]  # both shards, first and last rows
    ims = [Image.open(io.BytesIO(by_key[keys[r]]["jpg"])) for r in rows]
    assert all(im.size == (224, 224) for im in ims)
    assert np.min(np.sum(enc.encode_images(ims) * img[rows], axis=1)) > 0.99
    caps = [by_key[keys[r]]["txt"].decode() for r in rows]
    assert np.min(np.sum(enc.encode_text(caps) * txt[rows], axis=1)) > 0.99

    lap("embedding check")
    idx = index_stage(w / "embed", w / "index", cfg)
    assert idx["image"]["vectors"] == N_PAIRS and idx["image"]["recall@8"] >= 0.95
    voc_rep = vocabulary_stage(w / "embed", w / "vocabulary", cfg)
    vocab = pq.read_table(w / "vocabulary" / "vocabulary.parquet").column("concept").to_pylist()
    assert voc_rep["from_captions"] >= 50 and {"dog", "person", "monitor", "table"} <= set(vocab)
    lap("index + vocabulary")
    concept_emb, _ = concepts_stage(w / "vocabulary", w / "concept_emb", cfg, enc_id, enc.encode_text)
    data = load_curation_data(w / "embed", w / "vocabulary", concept_emb, cfg.curation.max_ngram)
    image_index = load_index(w / "index", "image", embed_dir=w / "embed")
    upstream = curation_upstream_fp(cfg, enc_id)
    reps = [curate_shard_stage(data, s, stage_dir(cfg, "curate"), cfg, upstream, enc_id, image_index, None)
            for s in shard_names(data)]
    assert [r["images"] for r in reps] == [30, 30]
    reader = ArchiveReader(stage_dir(cfg, "curate"))
    assert len(reader) == N_PAIRS and np.mean([len(reader.get(k).concepts) for k in keys]) > 3

    lap("concepts + curate")
    tr = train_stage(cfg, log=lambda m: None, progress=False)
    assert tr["steps"] == 2 and np.isfinite(tr["last_loss"]) and tr["variant"] == "cocu"
    lap("train")
    ev = evaluate_stage(cfg, log=lambda m: None, progress=False)
    seg = ev["segmentation"]["voc"]
    assert seg["images"] == 2 and len(seg["per_class_iou"]) == 21
    # the printed mIoU is that of the saved VOC-palette predictions scored against the truth PNGs (numpy, 255 ignored)
    from test_eval_segmentation import miou_of_files

    names = ["2007_000032", "2007_000039"]
    saved = [np.asarray(Image.open(tmp_path / "preds" / "voc" / f"{n}.png")) for n in names]
    truth = [np.asarray(Image.open(voc / "SegmentationClass" / f"{n}.png")) for n in names]
    assert saved[0].shape == truth[0].shape == (180, 240) and saved[1].shape == (240, 180)
    assert miou_of_files(saved, truth, 21, ignore=(255,)) == pytest.approx(seg["mIoU"], abs=1e-9)
    assert seg["settings"]["bg_thresh"] == 0.95 and seg["settings"]["crop"] == 448
    assert (Path(ev["dir"]) / "table.md").is_file() and seg["panels"]
    lap("evaluate")
