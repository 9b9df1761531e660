"""The semantic-gap scores on a hand-worked example.

Convention (ours: the paper reports the gap in words, not as P/R over synonyms): a predicted concept counts through
the toy world's lemma table (LEMMA_TO_CONCEPT: "automobile" is car, "sea" and "lake" are water); a ground-truth class
is hit at most once, so a second synonym of a class already hit is a wrong prediction (a list of synonyms must not
score); P@k divides by the predictions made (an image with none adds nothing), R@k by the ground-truth classes, the
missing-concept R@k by the classes its caption does not name; an image with no prediction counts in empty_fraction.
"""

import math

import pytest

from cocu_core.evaluation.semantic_gap import format_gap_report, gap_scores
from cocu_core.toyworld.concepts import LEMMA_TO_CONCEPT


def test_hand_worked_scores():
    ranked = [["automobile", "sky", "photo"], ["sea", "lake", "boat"], []]
    gt = [{"car", "sky", "road"}, {"water", "boat"}, {"grass"}]
    cap = [{"car"}, {"boat"}, set()]
    r = gap_scores(ranked, gt, cap, LEMMA_TO_CONCEPT.get, k=3)
    # hits: img0 {car, sky}; img1 {water, boat} (sea and lake are both water: one hit); img2 none
    assert r["precision"] == pytest.approx(4 / 6)
    assert r["recall"] == pytest.approx(4 / 6)
    # missing: img0 {sky, road} -> sky hit; img1 {water} -> hit; img2 {grass} -> miss
    assert r["missing_recall"] == pytest.approx(2 / 4)
    assert r["empty_fraction"] == pytest.approx(1 / 3)
    assert "| cocu | 0.667 |" in format_gap_report({"cocu": r})


def test_length_mismatch_is_clear():
    with pytest.raises(ValueError, match="length mismatch"):
        gap_scores([["a"]], [], [], LEMMA_TO_CONCEPT.get)


def test_no_ground_truth_gives_nan():
    r = gap_scores([], [], [], LEMMA_TO_CONCEPT.get)
    assert math.isnan(r["precision"]) and math.isnan(r["recall"])


def test_salience_recall_by_hand():
    from cocu_core.evaluation.semantic_gap import format_salience, salience_recall

    # classes 0, 1 are things, 2 is stuff; top-1 by similarity: image 0 -> class 0, image 1 -> class 1
    sim = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]]
    present = [[0, 1, 2], [0, 1]]
    areas = [[0.30, 0.02, 0.5], [0.01, 0.20]]
    rows = salience_recall(sim, present, areas, ["thing", "thing", "stuff"], k=1, bins=2)
    things = [r for r in rows if r["kind"] == "thing"]
    # thing areas 0.01, 0.02 (small half: neither is its image's top class) and 0.20, 0.30 (large half: both are)
    assert [(r["quartile"], r["concepts"], r["recall@1"]) for r in things] == [(1, 2, 0.0), (2, 2, 1.0)]
    assert things[0]["area_from"] == 0.01 and things[1]["area_to"] == 0.30
    stuff = [r for r in rows if r["kind"] == "stuff"]
    assert sum(r["concepts"] for r in stuff) == 1 and all(r["recall@1"] in (0.0,) or math.isnan(r["recall@1"]) for r in stuff)
    assert "| thing | 2 | 0.110-0.300 | 2 | 1.000 |" in format_salience(rows, k=1)  # the median of the 4 thing areas: 0.11
