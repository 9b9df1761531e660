"""Bad input: refused with a message naming the sample, or kept as a (possibly empty) archive row."""

import numpy as np
import pytest

from cocu_core.concepts.extract import ConceptExtractor
from cocu_core.config import CurationConfig
from cocu_core.curation import CurationInputError, curate, reference_curate

from curation_fixtures import random_inputs


@pytest.mark.parametrize("impl", [curate, reference_curate])
def test_nan_image_embedding_is_refused_by_key(impl):
    keys, caps, csr, img, cap, T, names = random_inputs(n=40)
    img = img.copy()
    img[17, 3] = np.nan
    with pytest.raises(CurationInputError, match="s00017"):
        impl(keys, caps, csr, img, cap, T, CurationConfig(), concept_names=names)


def test_nan_caption_embedding_only_matters_for_language_expansion():
    keys, caps, csr, img, cap, T, names = random_inputs(n=40)
    cap = cap.copy()
    cap[5] = np.nan
    with pytest.raises(CurationInputError, match="caption embedding.*s00005"):
        curate(keys, caps, csr, img, cap, T, CurationConfig(variant="v1"), concept_names=names)
    assert curate(keys, caps, csr, img, cap, T, CurationConfig(variant="v2"), concept_names=names).num_rows == 40


@pytest.mark.parametrize("impl", [curate, reference_curate])
def test_duplicate_keys_are_refused_by_key(impl):
    keys, caps, csr, img, cap, T, names = random_inputs(n=40)
    keys = list(keys)
    keys[30] = keys[3]
    with pytest.raises(CurationInputError, match="duplicate sample keys: 's00003'"):
        impl(keys, caps, csr, img, cap, T, CurationConfig(), concept_names=names)


def test_out_of_vocabulary_ids_and_misaligned_arrays_are_refused():
    keys, caps, csr, img, cap, T, names = random_inputs(n=40)
    offsets, ids = csr
    bad = ids.copy()
    bad[offsets[9]] = len(names) + 5 if offsets[10] > offsets[9] else bad[0]
    if offsets[10] > offsets[9]:
        with pytest.raises(CurationInputError, match="s00009"):
            curate(keys, caps, (offsets, bad), img, cap, T, CurationConfig(), concept_names=names)
    with pytest.raises(CurationInputError, match="image embeddings have shape"):
        curate(keys, caps, csr, img[:-1], cap, T, CurationConfig(), concept_names=names)
    with pytest.raises(CurationInputError, match="query rows outside"):
        curate(keys, caps, csr, img, cap, T, CurationConfig(), concept_names=names, query_rows=np.array([40]))
    with pytest.raises(CurationInputError, match="caption embeddings"):
        curate(keys, caps, csr, img, None, T, CurationConfig(variant="v1"), concept_names=names)


@pytest.mark.parametrize("variant", ["baseline", "v2", "cocu"])
def test_empty_and_unmatched_captions_keep_their_rows(variant):
    keys, _, _, img, cap, T, _ = random_inputs(n=30, n_concepts=4, max_len=2)
    names = ["dog", "car", "ice cream", "tree"]
    captions = ["a dog and a car", "", None, "a quiet afternoon", "ice cream under a tree"] + ["a dog"] * 25
    csr = ConceptExtractor(names).extract_many(captions)
    cfg = CurationConfig(variant=variant, n_neighbours=3)
    table = curate(keys, captions, csr, img, cap, T, cfg, concept_names=names)
    ref = reference_curate(keys, captions, csr, img, cap, T, cfg, concept_names=names)
    assert table.num_rows == 30 and table.column("key").to_pylist() == keys
    rows = table.to_pylist()
    assert [r["caption"] for r in rows[1:4]] == ["", "", "a quiet afternoon"]
    for r, rr in zip(rows, ref.to_pylist()):
        assert r["concept_ids"] == rr["concept_ids"]
    for r in rows[1:4]:
        assert r["caption_concept_ids"] == []
        if variant == "baseline":
            assert r["concepts"] == []  # nothing of its own and no expansion: an empty archive row
        else:
            assert set(r["concepts"]) <= set(names) and r["concepts"]  # what the neighbours contribute


@pytest.mark.parametrize("variant", ["baseline", "cocu"])
def test_a_batch_with_no_concepts_at_all_gives_empty_rows(variant):
    keys, _, _, img, cap, T, names = random_inputs(n=12, n_concepts=4, max_len=1)
    captions = ["", None, "nothing here"] * 4
    csr = (np.zeros(13, np.int64), np.zeros(0, np.int32))
    table = curate(keys, captions, csr, img, cap, T, CurationConfig(variant=variant), concept_names=names)
    assert table.num_rows == 12
    assert all(r["concepts"] == [] and r["t2v_scores"] == [] for r in table.to_pylist())
    ref = reference_curate(keys, captions, csr, img, cap, T, CurationConfig(variant=variant), concept_names=names)
    assert ref.column("concepts").to_pylist() == [[]] * 12
