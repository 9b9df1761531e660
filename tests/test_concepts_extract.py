"""Extraction: longest match, WordNet singularisation, exact ids (no substring matches), CSR output."""

import numpy as np

from cocu_core.concepts.extract import ConceptExtractor
from cocu_core.concepts.text import normalise, singular

VOCAB = ["ice", "cream", "ice cream", "car", "goose", "box", "man", "person", "dog", "hot dog", "teddy bear", "bus"]


def _names(ex, caption):
    return [VOCAB[i] for i in ex.extract(caption)]


def test_singularisation_with_wordnet():
    assert [singular(w) for w in ["geese", "boxes", "men", "dogs", "buses", "people", "children"]] == [
        "goose", "box", "man", "dog", "bus", "person", "child"]
    assert singular("glass") == "glass" and singular("grass") == "grass"
    assert normalise("Two GEESE, three Boxes!") == ["two", "goose", "three", "box"]


def test_longest_match_wins():
    ex = ConceptExtractor(VOCAB, max_ngram=3)
    assert _names(ex, "A child eating ice cream") == ["ice cream"]
    assert _names(ex, "ice on the cream") == ["ice", "cream"]
    assert _names(ex, "a hot dog next to a dog") == ["hot dog", "dog"]
    assert _names(ex, "Two teddy bears") == ["teddy bear"]


def test_plurals_map_to_the_singular_concept_and_ids_are_deduplicated():
    ex = ConceptExtractor(VOCAB)
    assert _names(ex, "geese near boxes, men and a man") == ["goose", "box", "man"]
    assert _names(ex, "people waiting for buses") == ["person", "bus"]


def test_no_substring_matches():
    ex = ConceptExtractor(VOCAB)
    assert _names(ex, "a cart full of carpets") == []  # "cart" must not match "car"
    assert _names(ex, "boxer and doghouse and scream") == []
    assert _names(ex, "a car") == ["car"]


def test_empty_and_unmatched_captions_give_nothing():
    ex = ConceptExtractor(VOCAB)
    assert ex.extract("") == [] and ex.extract(None) == [] and ex.extract("what a day!") == []


def test_extract_many_is_csr_aligned_with_captions():
    ex = ConceptExtractor(VOCAB)
    caps = ["ice cream and a dog", "", None, "geese", "ice cream and a dog"]
    offsets, ids = ex.extract_many(caps)
    assert offsets.dtype == np.int64 and ids.dtype == np.int32
    assert offsets.tolist() == [0, 2, 2, 2, 3, 5]
    assert [VOCAB[i] for i in ids] == ["ice cream", "dog", "goose", "ice cream", "dog"]
    for k, cap in enumerate(caps):
        assert ids[offsets[k]:offsets[k + 1]].tolist() == ex.extract(cap)
