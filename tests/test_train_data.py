"""Training data: real webdataset tars (tarfile + PIL JPEGs) joined with real archives (write_archive).

Checks the key join and its skip counts, clear errors, determinism (same seed, resume, ranks, workers),
each variant's prompts, templates and padding, and that augmentation never disturbs the caller's RNG.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocu_core.config import CurationConfig, TrainConfig
from cocu_core.curation import ConceptSampler
from cocu_core.templates import get_templates
from cocu_core.train.data import (IMAGENET_MEAN, IMAGENET_STD, TrainBatch, TrainData, TrainDataError, build_transform,
                                  index_shards, posterize_compat)
from cocu_core.train.nouns import caption_nouns

torch.set_num_threads(1)

from train_fixtures import NOUNS, SIZE, archive_row, caption_of, colour, key_of, write_arch, write_shards


def tcfg(**kw) -> TrainConfig:
    base = {"batch_size": 8, "augment": "deit", "templates": "full80", "seed": 3, "num_workers": 0}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """30 samples in 3 shards (sample 4 corrupt); archive rows for samples 0..25 plus 2 keys of no sample."""
    root = tmp_path_factory.mktemp("traindata")
    write_shards(root / "shards", 30, corrupt={4})
    rows = [archive_row(i) for i in range(26)]
    rows[7]["concepts"], rows[7]["concept_ids"] = rows[7]["concepts"][:2], rows[7]["concept_ids"][:2]
    for col in ("naive_scores", "t2v_scores", "cluster_ids"):
        rows[7][col] = rows[7][col][:2]
    rows[8].update(concepts=[], concept_ids=[], naive_scores=[], t2v_scores=[], cluster_ids=[])
    rows += [{**archive_row(90), "key": "elsewhere1"}, {**archive_row(91), "key": "elsewhere2"}]
    write_arch(root / "cocu", rows, "cocu")
    write_arch(root / "v3", rows, "v3", naive_sampling="topk")
    return root


def all_batches(data: TrainData, epoch: int = 0, start: int = 0) -> list[TrainBatch]:
    return list(data.batches(epoch, start))


def same(a: list[TrainBatch], b: list[TrainBatch]) -> bool:
    return len(a) == len(b) and all(
        x.keys == y.keys and x.texts == y.texts and x.skipped == y.skipped and x.step == y.step
        and torch.equal(x.images, y.images) for x, y in zip(a, b))


def test_join_by_key_skip_counts_and_corrupt_image(world):
    data = TrainData(world / "shards", world / "cocu", "cocu", SIZE, tcfg(batch_size=13))
    assert data.n_samples == 26 and data.steps_per_epoch == 2
    assert data.skipped_at_index == {"no_archive_row": 4}
    assert set(data.keys.tolist()) == {key_of(i) for i in range(26)}
    seen, skipped = [], {}
    for b in data.batches(0):
        assert b.images.shape == (len(b), 3, SIZE, SIZE) and b.images.dtype == torch.float32
        assert len(b.texts) == len(b.keys) == len(b)
        for k, t in zip(b.keys, b.texts):
            assert t[0] == caption_of(int(k[:5]) * 100 + int(k[5:])) and len(t) == 4
        seen += b.keys
        for r, n in b.skipped.items():
            skipped[r] = skipped.get(r, 0) + n
    assert skipped == {"corrupt_image": 1} and key_of(4) not in seen
    assert len(seen) == 25 and len(set(seen)) == 25  # every usable sample once, the broken one skipped


def test_images_belong_to_their_keys_and_are_normalised(world):
    data = TrainData(world / "shards", None, "baseline", SIZE, tcfg(augment="none", batch_size=10))
    assert data.n_samples == 30 and data.skipped_at_index == {}
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for b in data.batches(0):
        for k, img in zip(b.keys, b.images):
            i = int(k[:5]) * 100 + int(k[5:])
            rgb = (img * std + mean).mean(dim=(1, 2)) * 255
            assert torch.allclose(rgb, torch.tensor(colour(i), dtype=torch.float32), atol=3), (k, rgb)


def test_missing_image_member_is_left_out_at_index_time(tmp_path):
    write_shards(tmp_path / "shards", 10, no_image={2, 5})
    data = TrainData(tmp_path / "shards", None, "baseline", SIZE, tcfg(batch_size=4))
    assert data.n_samples == 8 and data.skipped_at_index == {"missing_image": 2}
    assert key_of(2) not in data.keys.tolist()


def test_clear_errors(world, tmp_path):
    shards = world / "shards"
    with pytest.raises(TrainDataError, match="none of the 2 keys .* different runs"):
        TrainData(shards, write_arch(tmp_path / "other", [{**archive_row(1), "key": "zz1"}, {**archive_row(2), "key": "zz2"}]),
                  "cocu", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="empty"):
        TrainData(shards, write_arch(tmp_path / "empty", []), "cocu", SIZE, tcfg())
    (tmp_path / "nofiles").mkdir()
    with pytest.raises(TrainDataError, match="no archive shards"):
        TrainData(shards, tmp_path / "nofiles", "cocu", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="archive folder not found"):
        TrainData(shards, tmp_path / "missing", "cocu", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="no webdataset shards"):
        TrainData(tmp_path / "nofiles", None, "baseline", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="shard folder not found"):
        TrainData(tmp_path / "missing", None, "baseline", SIZE, tcfg())
    (tmp_path / "emptytar").mkdir()
    tarfile.open(tmp_path / "emptytar" / "00000.tar", "w").close()
    with pytest.raises(TrainDataError, match="hold no samples"):
        TrainData(tmp_path / "emptytar", None, "baseline", SIZE, tcfg())
    (tmp_path / "badtar").mkdir()
    (tmp_path / "badtar" / "00000.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(TrainDataError, match=r"00000.tar: not a readable tar"):
        TrainData(tmp_path / "badtar", None, "baseline", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="curated as 'v3'"):
        TrainData(shards, world / "v3", "cocu", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="needs a concept archive"):
        TrainData(shards, None, "topk-release", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="not divisible by 3"):
        TrainData(shards, None, "baseline", SIZE, tcfg(), rank=0, world_size=3)
    with pytest.raises(TrainDataError, match="fewer than one global batch"):
        TrainData(shards, world / "cocu", "cocu", SIZE, tcfg(batch_size=32))
    data = TrainData(shards, world / "cocu", "cocu", SIZE, tcfg())
    with pytest.raises(TrainDataError, match="start_step 4"):
        data.batches(0, 4)


def test_determinism_resume_ranks_and_workers(world):
    args = (world / "shards", world / "cocu", "cocu", SIZE)
    one = TrainData(*args, tcfg())
    e0 = all_batches(one, 0)
    assert [b.step for b in e0] == [0, 1, 2] and sum(len(b) + sum(b.skipped.values()) for b in e0) == 24
    assert same(e0, all_batches(TrainData(*args, tcfg()), 0))  # same seed, same batches
    e1 = all_batches(one, 1)
    assert [b.keys for b in e1] != [b.keys for b in e0]  # a new order each epoch
    assert not same(all_batches(TrainData(*args, tcfg(seed=4)), 0), e0)
    assert same(all_batches(one, 1, start=2), e1[2:]) and all_batches(one, 1, start=3) == []  # exact resume
    ranks = [all_batches(TrainData(*args, tcfg(), rank=r, world_size=2), 1) for r in (0, 1)]
    for g, a, b in zip(e1, *ranks):
        assert a.keys + b.keys == g.keys and a.texts + b.texts == g.texts and a.step == b.step == g.step
        assert torch.equal(torch.cat([a.images, b.images]), g.images)
        assert {k: a.skipped.get(k, 0) + b.skipped.get(k, 0) for k in g.skipped} == g.skipped
    assert same(all_batches(TrainData(*args, tcfg(num_workers=2)), 1), e1)  # worker processes change nothing


def test_augmentation_leaves_the_callers_rng_alone(world):
    data = TrainData(world / "shards", world / "cocu", "cocu", SIZE, tcfg())
    torch.manual_seed(123)
    np.random.seed(5)
    state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    batches = all_batches(data, 0)
    assert torch.equal(torch.get_rng_state(), state) and np.array_equal(np.random.get_state()[1], np_state)
    # and augmentation is random: one sample's crops differ between epochs
    k = batches[0].keys[0]
    later = [b.images[b.keys.index(k)] for b in all_batches(data, 1) if k in b.keys][0]
    assert not torch.equal(later, batches[0].images[0])


def _fill(template_set: str, concept: str) -> set[str]:
    return {t.replace("{}", concept) for t in get_templates(template_set)}


def test_topk_release_is_top3_by_score_with_simple_template_and_padding(world):
    data = TrainData(world / "shards", world / "cocu", "topk-release", SIZE, tcfg(templates="simple"))
    keys = data.keys.tolist()
    for i in (0, 3, 7, 8):
        row = archive_row(i)
        j = keys.index(key_of(i))
        texts = data.texts_for(0, j)
        cap = caption_of(i)
        if i == 7:  # two concepts: padded with the caption
            expected = [f"a photo of a {c}." for c in row["concepts"][:2]] + [cap]
        elif i == 8:  # none
            expected = [cap] * 3
        else:
            order = np.argsort(-np.asarray(row["t2v_scores"]), kind="stable")[:3]
            expected = [f"a photo of a {row['concepts'][o]}." for o in order]
        assert texts == [cap, *expected]
        assert data.texts_for(5, j) == texts  # deterministic across epochs


def test_baseline_uses_caption_nouns_with_full80_templates(world):
    data = TrainData(world / "shards", None, "baseline", SIZE, tcfg())
    keys = data.keys.tolist()
    for i in (0, 1, 9, 12):
        j = keys.index(key_of(i))
        cap = caption_of(i)
        texts = data.texts_for(0, j)
        assert texts[0] == cap and len(texts) == 4
        nouns = caption_nouns(cap)
        if not nouns:
            assert texts[1:] == [cap] * 3
            continue
        assert nouns == [NOUNS[i % 8], NOUNS[(i + 3) % 8], NOUNS[(i + 5) % 8]]
        got = []
        for p in texts[1:]:
            hits = [n for n in nouns if p in _fill("full80", n)]
            assert len(hits) == 1, p
            got.append(hits[0])
        assert sorted(got) == sorted(nouns)  # all three nouns, without replacement
    # template draws vary: across epochs one caption gets different sentences
    j = keys.index(key_of(0))
    assert len({tuple(data.texts_for(e, j)[1:]) for e in range(6)}) > 1


def test_cocu_draws_clusters_anew_each_epoch_and_v3_reads_archive_sampling(world):
    data = TrainData(world / "shards", world / "cocu", "cocu", SIZE, tcfg(templates="simple"))
    keys = data.keys.tolist()
    j = keys.index(key_of(3))
    row = archive_row(3)
    draws = set()
    for e in range(12):
        prompts = data.texts_for(e, j)[1:]
        names = [p[len("a photo of a "):-1] for p in prompts]
        assert set(names) <= set(row["concepts"])
        assert len({row["cluster_ids"][row["concepts"].index(n)] for n in names}) == 3  # one per cluster
        draws.add(tuple(names))
    assert len(draws) > 1
    # the sampler is the curation's ConceptSampler fed by the per-sample generator
    d = data._samples
    entry = d.entry(j)
    rng = d.sample_seeds(4, j)[1]
    picks = ConceptSampler("cocu", k=3).sample_indices(entry, rng)
    assert [f"a photo of a {entry.concepts[p]}." for p in picks] == data.texts_for(4, j)[1:]

    v3 = TrainData(world / "shards", world / "v3", "v3", SIZE, tcfg(templates="simple"))  # archive says topk
    j3 = v3.keys.tolist().index(key_of(3))
    assert {tuple(v3.texts_for(e, j3)[1:]) for e in range(4)} == {
        tuple(f"a photo of a {c}." for c in row["concepts"][:3])}
    weighted = TrainData(world / "shards", world / "v3", "v3", SIZE, tcfg(templates="simple"),
                         k_sample_cfg=CurationConfig(variant="v3", naive_sampling="weighted"))
    assert len({tuple(weighted.texts_for(e, j3)[1:]) for e in range(12)}) > 1


def test_k_prompts_and_index_cache(world, tmp_path):
    data = TrainData(world / "shards", world / "cocu", "cocu", SIZE, tcfg(k_prompts=5, augment="crop_flip"),
                     index_dir=tmp_path / "idx")
    b = next(iter(data.batches(0)))
    assert all(len(t) == 6 for t in b.texts)  # caption + 5, sampler draws min(k_sample=3, 5), caption pads
    assert b.images.shape[1:] == (3, SIZE, SIZE)
    cached = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert cached == ["00000.index.parquet", "00001.index.parquet", "00002.index.parquet"]
    a, c = index_shards(world / "shards"), index_shards(world / "shards", tmp_path / "idx")
    assert a.keys.tolist() == c.keys.tolist() and np.array_equal(a.img_off, c.img_off)


def test_crop_flip_is_reproducible_per_sample(world):
    args = (world / "shards", world / "cocu", "cocu", SIZE)
    g = all_batches(TrainData(*args, tcfg(augment="crop_flip")), 2)
    parts = [all_batches(TrainData(*args, tcfg(augment="crop_flip"), rank=r, world_size=4), 2) for r in range(4)]
    for s, gb in enumerate(g):
        assert torch.equal(torch.cat([p[s].images for p in parts]), gb.images)


def test_randaugment_full_magnitude_posterize_does_not_raise():
    # timm's PosterizeIncreasing at magnitude 10 asks Pillow for 0 bits, which Pillow >= 10 refuses
    img = Image.new("RGB", (SIZE, SIZE), (200, 100, 50))
    assert posterize_compat(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    assert posterize_compat(img, 8) is img and posterize_compat(img, 2).getpixel((0, 0)) == (192, 64, 0)
    tf = build_transform("deit", SIZE, tcfg(rand_augment="rand-m10-n3-mstd0-inc1"))
    import random
    for s in range(60):
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        assert tf(img).shape == (3, SIZE, SIZE)


TRICKY = ["dog", "t-shirt", "3d printer", "men's shirt", "café", "r&b", "<start_of_text>", "dog.", ".net", "",
          "a  b", "x2", "2x", "hot-dog!", "rock'n'roll", "Golden Retriever", "(sic)", "8", "ice cream cone on a "
          "hot summer day at the crowded beach next to the pier with many colourful umbrellas", "naïve", "ß", "a{}b"]


def test_cached_prompt_and_caption_tokens_equal_the_tokenizer():
    from cocu_core.model.text import tokenize
    from cocu_core.train.tokens import TextTokens

    for length in (77, 12):  # 12: the long prompts and captions are cut, their EOT kept
        for name in ("full80", "subset7", "simple"):
            temps = get_templates(name)
            tt = TextTokens(temps, length)
            for rep in range(2):  # the second pass reads the caches
                for t, tmpl in enumerate(temps):
                    want = tokenize([tmpl.replace("{}", c) for c in TRICKY], length).numpy()
                    got = np.stack([tt.prompt(t, c) for c in TRICKY])
                    assert np.array_equal(got, want), (length, tmpl)
        tt = TextTokens(get_templates("simple"), length)
        caps = [caption_of(i) for i in range(10)] + [" ".join(TRICKY) * 3, "", "  A Dog &amp; a CAT  "]
        assert np.array_equal(np.stack([tt.text(c) for c in caps]), tokenize(caps, length).numpy())


def test_batches_carry_token_ids_of_their_texts_with_and_without_workers(world):
    from cocu_core.model.text import tokenize

    args = (world / "shards", world / "cocu", "cocu", SIZE)
    for variant, archive in (("cocu", world / "cocu"), ("baseline", None)):
        one = TrainData(world / "shards", archive, variant, SIZE, tcfg(), context_length=20)
        e0 = all_batches(one, 0)
        for b in e0:
            assert b.tokens.dtype == torch.int64 and b.tokens.shape == (len(b), 4, 20)
            assert torch.equal(b.tokens.view(-1, 20), tokenize([t for per in b.texts for t in per], 20))
    data = TrainData(*args, tcfg(), context_length=20)
    ref = [all_batches(data, e) for e in range(3)]
    assert all(b.tokens is None for b in all_batches(TrainData(*args, tcfg()), 0))  # no context length, no ids
    workers = TrainData(*args, tcfg(num_workers=2), context_length=20)
    try:
        first = next(iter(workers.batches(0)))  # an epoch left unfinished: its persistent workers go on
        assert same([first], ref[0][:1]) and torch.equal(first.tokens, ref[0][0].tokens)
        for e in (1, 2):
            got = all_batches(workers, e)
            assert same(got, ref[e]) and all(torch.equal(a.tokens, b.tokens) for a, b in zip(got, ref[e]))
        assert same(all_batches(workers, 1, start=1), ref[1][1:])  # resume mid-epoch on the same workers
    finally:
        workers.close()


def test_large_jpegs_decode_at_a_reduced_scale_never_below_what_the_crop_needs():
    import io

    from cocu_core.train.data import decode_image, decode_need

    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (10, 200, 30)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert decode_image(data).size == (1600, 1200)
    px, side = decode_need("deit", 224, (0.08, 1.0))
    assert side == 0 and px == int(np.ceil(224 ** 2 / 0.06))
    assert decode_image(data, px).size == (1600, 1200)  # 1.92 MP, the smallest crop needs 0.84 MP: no halving
    small = decode_need("crop_flip", 64, (0.5, 1.0))  # 10,923 px
    img = decode_image(data, *small)
    assert img.size == (200, 150) and img.mode == "RGB" and img.size[0] * img.size[1] >= small[0]  # 1/8 scale
    assert decode_image(data, *decode_need("crop_flip", 200, (0.5, 1.0))).size == (400, 300)  # 107 kpx: 1/4
    img = decode_image(data, *decode_need("none", 224, (0.08, 1.0)))
    assert img.size == (400, 300) and min(img.size) >= 224  # 1/4 scale: 1/8 would leave a 150-px short side
    png = io.BytesIO()
    Image.new("L", (600, 600), 7).save(png, "PNG")
    assert decode_image(png.getvalue(), 10, 10).size == (600, 600)  # only JPEGs have a DCT draft
    assert decode_image(png.getvalue()).mode == "RGB"


def test_auto_worker_count_is_the_cores_this_process_may_use_less_one():
    import os

    from cocu_core.train.data import resolve_workers

    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(-1) == max(1, cores - 1) and resolve_workers(3) == 3 and resolve_workers(0) == 0
    assert resolve_workers(-1, processes=cores) == 1


def test_fused_normalisation_matches_totensor_normalize_and_deit_keeps_its_order():
    from cocu_core.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision import transforms as T

    from cocu_core.train.data import ToNormalized

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    ref = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(rgb))
    for img in (rgb, rgb.convert("L").convert("RGB"), rgb.convert("RGBA")):
        want = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(img.convert("RGB")))
        got = ToNormalized()(img)
        assert got.shape == want.shape == (3, 40, 56) and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=2e-6)
    assert torch.allclose(ToNormalized()(rgb), ref, atol=2e-6)
    names = [type(t).__name__ for t in build_transform("deit", SIZE, tcfg()).transforms]
    assert names[-2:] == ["ToNormalized", "RandomErasing"] and "Normalize" not in names  # erasing after normalising
