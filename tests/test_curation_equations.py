"""Eq. 6-8 on a hand-worked example: 3 images, 4 concepts, numbers computed by hand from the formulas.

Concept embeddings are the basis vectors e_0..e_3, so s(x, c) is simply component c of v_x:
    v0 = (0.5, 0.5, 0.5, 0.5)   caption concepts {c0}
    v1 = (0.6, 0.0, 0.8, 0.0)   caption concepts {c0, c2}
    v2 = (0.0, 0.28, 0.0, 0.96) caption concepts {c3}
With N = 2 every other image is a neighbour; c1 is never mentioned, so it is in no archive.

Source and reading: the paper's Eq. 6-8 (CoCu, NeurIPS 2023, Sec. 3.2). Eq. 8's normaliser M_x is read as the
authors' release computes it: the maximum similarity over all retrieved members (the image itself included) and
all candidate concepts of the image, one number per image (0.96 for x0 and x1 below), not a per-concept maximum.
The denominator clamp (last test) is a deliberate departure from the paper, which has none: EPS = 0.01.
"""

import numpy as np
import pytest

from cocu_core.config import CurationConfig
from cocu_core.curation import curate, reference_curate

V = np.array([[0.5, 0.5, 0.5, 0.5], [0.6, 0.0, 0.8, 0.0], [0.0, 0.28, 0.0, 0.96]], np.float32)
T = np.eye(4, dtype=np.float32)
OFFSETS = np.array([0, 1, 3, 4])
IDS = np.array([0, 0, 2, 3], np.int32)
KEYS = ["x0", "x1", "x2"]
NAMES = ["c0", "c1", "c2", "c3"]

# Image x0: A = {c0, c2, c3}; X_c0 = {x1}, X_c2 = {x1}, X_c3 = {x2}; s(x0, c) = 0.5 for all c.
# r_nb: c0 0.5/((0.6+0.5)/2), c2 0.5/((0.8+0.5)/2), c3 0.5/((0.96+0.5)/2); M_0 = 0.96.
X0_T2V = {"c0": 0.5 / 0.96 + 0.5 / 0.55, "c2": 0.5 / 0.96 + 0.5 / 0.65, "c3": 0.5 / 0.96 + 0.5 / 0.73}
# Image x1: neighbours x0 (0.7) then x2 (0.0); X_c0 = {x0}, X_c2 = {}, X_c3 = {x2}; M_1 = 0.96.
X1_T2V = {"c2": 0.8 / 0.96 + 0.8 / 0.8, "c0": 0.6 / 0.96 + 0.6 / 0.55, "c3": 0.0 / 0.96 + 0.0 / 0.48}
X1_NAIVE = {"c2": 0.8, "c0": 0.6, "c3": 0.0}


@pytest.mark.parametrize("impl", [curate, reference_curate])
def test_t2v_ranking_by_hand(impl):
    cfg = CurationConfig(variant="v3", n_neighbours=2)
    rows = impl(KEYS, ["a", "b", "c"], (OFFSETS, IDS), V, None, T, cfg, concept_names=NAMES).to_pylist()
    x0, x1 = rows[0], rows[1]
    assert x0["concepts"] == ["c0", "c2", "c3"]  # 1.4299 > 1.2901 > 1.2058
    np.testing.assert_allclose(x0["t2v_scores"], [X0_T2V[c] for c in x0["concepts"]], atol=1e-6)
    np.testing.assert_allclose(x0["t2v_scores"], [1.429924, 1.290064, 1.205765], atol=1e-6)
    np.testing.assert_allclose(x0["naive_scores"], [0.5, 0.5, 0.5], atol=1e-6)
    assert x1["neighbour_keys"] == ["x0", "x2"]
    assert x1["concepts"] == ["c2", "c0", "c3"]
    np.testing.assert_allclose(x1["t2v_scores"], [X1_T2V[c] for c in x1["concepts"]], atol=1e-6)
    np.testing.assert_allclose(x1["t2v_scores"], [1.833333, 1.715909, 0.0], atol=1e-6)
    np.testing.assert_allclose(x1["naive_scores"], [X1_NAIVE[c] for c in x1["concepts"]], atol=1e-6)
    assert all("c1" not in r["concepts"] for r in rows)


@pytest.mark.parametrize("impl", [curate, reference_curate])
def test_baseline_uses_caption_concepts_only(impl):
    cfg = CurationConfig(variant="baseline", n_neighbours=2)
    rows = impl(KEYS, ["a", "b", "c"], (OFFSETS, IDS), V, None, T, cfg, concept_names=NAMES).to_pylist()
    assert [r["concepts"] for r in rows] == [["c0"], ["c2", "c0"], ["c3"]]  # naive order: 0.8 > 0.6
    np.testing.assert_allclose(rows[1]["naive_scores"], [0.8, 0.6], atol=1e-6)
    assert all(r["neighbour_keys"] == [] for r in rows)
    # T2V with no neighbours: r = s/max_c s + 1.
    np.testing.assert_allclose(rows[1]["t2v_scores"], [0.8 / 0.8 + 1, 0.6 / 0.8 + 1], atol=1e-6)


def test_language_driven_expansion_uses_caption_index():
    # Caption embeddings chosen so x0's nearest caption is x2's (not x1's, as with images).
    cap = np.array([[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    cfg = CurationConfig(variant="v1", n_neighbours=1)
    rows = curate(KEYS, ["a", "b", "c"], (OFFSETS, IDS), V, cap, T, cfg, concept_names=NAMES).to_pylist()
    assert rows[0]["neighbour_keys"] == ["x2"]
    assert sorted(rows[0]["concepts"]) == ["c0", "c3"]
    vision = curate(KEYS, ["a", "b", "c"], (OFFSETS, IDS), V, cap, T, cfg.model_copy(update={"variant": "v2"}),
                    concept_names=NAMES).to_pylist()
    assert vision[0]["neighbour_keys"] == ["x1"]
    assert sorted(vision[0]["concepts"]) == ["c0", "c2"]


def test_t2v_denominators_are_clamped_where_a_weak_encoder_gives_near_zero_means():
    from cocu_core.curation.ranking import EPS, t2v_scores

    # one image, its one neighbour (whose caption has the concept), one concept: mean s = (0.05 - 0.06) / 2 < 0
    S = np.array([[[0.05], [-0.06]]])
    in_set = np.array([[[True], [True]]])
    naive, t2v = t2v_scores(S, in_set, np.array([[True]]))
    assert naive[0, 0] == 0.05
    # unclamped Eq. 7 would give 0.05 / -0.005 = -10 (sign flipped by noise); clamped it is 0.05 / EPS
    assert t2v[0, 0] == 0.05 / 0.05 + 0.05 / EPS
    assert EPS == 0.01  # the departure's literal value: below CLIP's similarity scale (0.1-0.4), so it never binds there


def test_eq8_maximum_counts_only_each_concepts_own_members_and_real_slots():
    from cocu_core.curation.ranking import t2v_scores

    # one image; members: itself and one neighbour; slots: concept 0 (real) and a padding slot
    S = np.array([[[0.2, 0.3], [0.9, 0.95]]])
    in_set = np.array([[[True, True], [False, True]]])  # the neighbour's caption does not name concept 0
    valid = np.array([[True, False]])
    naive, t2v = t2v_scores(S, in_set, valid)
    # concept 0: X_c = {} so mean = s0 = 0.2, and M = 0.2 (the neighbour's 0.9 is not in X_c, the padding's 0.95 is no
    # concept): r = 0.2 / 0.2 + 0.2 / 0.2
    assert t2v[0, 0] == pytest.approx(2.0) and naive[0, 0] == pytest.approx(0.2)
    assert np.isnan(t2v[0, 1]) and np.isnan(naive[0, 1])


def test_rank_order_breaks_score_ties_by_concept_id_including_id_zero():
    from cocu_core.curation.ranking import rank_order

    archive = np.array([[2, 0, -1, 5], [7, 3, 0, -1]])
    score = np.array([[0.5, 0.5, np.nan, 0.9], [0.1, 0.1, 0.1, np.nan]])
    # row 0: 5 (0.9) then the 0.5 tie in id order 0, 2, then the empty slot; row 1: a three-way tie 0, 3, 7
    assert rank_order(archive, score).tolist() == [[3, 1, 0, 2], [2, 1, 0, 3]]
