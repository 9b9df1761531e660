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
