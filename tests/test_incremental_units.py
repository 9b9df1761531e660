"""The incremental re-curation's row checks (cocu_core/curation/incremental.py) on small hand-made inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation_fixtures import l2
from cocu_core.curation.incremental import (caption_changed, carried, concepts_changed, id_mapping, joined_by_new,
                                            neighbour_rows, nth_similarity, ties_reordered)
from cocu_core.curation.neighbours import exact_index, search_neighbours


def test_joined_by_new_finds_exactly_the_rows_whose_n_nearest_gain_a_new_image():
    rng = np.random.default_rng(0)
    x = l2(rng.normal(size=(300, 16)).astype(np.float32))
    n_old, n = 240, 6
    old = np.arange(n_old)
    before = search_neighbours(exact_index(x[:n_old]), x[:n_old], old, n)
    after = search_neighbours(exact_index(x), x[:n_old], old, n)
    truth = (after >= n_old).any(axis=1)
    assert 0 < truth.sum() < n_old
    thr = nth_similarity(x, old, before, n)
    exact = joined_by_new(x, thr, old, np.arange(n_old, 300))
    np.testing.assert_array_equal(exact, truth)
    # through an index: every new image's 4n nearest hold every row it joins here (flat index, so all of them)
    via_index = joined_by_new(x, thr, old, np.arange(n_old, 300), exact_index(x), reverse_k=4 * n)
    assert (via_index >= truth).all() and (via_index == truth).mean() > 0.95


def test_a_row_with_fewer_than_n_neighbours_is_joined_by_any_new_image():
    x = l2(np.eye(4, dtype=np.float32) + 0.1)
    nb = np.array([[1, -1], [0, 2]])
    thr = nth_similarity(x, np.array([0, 1]), nb, 2)
    assert thr[0] == -np.inf and np.isfinite(thr[1])
    assert joined_by_new(x, thr, np.array([0, 1]), np.array([3]))[0]


def test_ids_follow_names_into_todays_vocabulary_and_dropped_concepts_count_as_changed():
    ids = pa.chunked_array([pa.array([[0, 2], [1]], pa.list_(pa.int32()))])
    names = pa.chunked_array([pa.array([["car", "tree"], ["dog"]], pa.list_(pa.string()))])
    m = id_mapping(ids, names, ["dog", "tree", "cat"])  # car dropped, ids renumbered
    np.testing.assert_array_equal(m, [-1, 0, 1])
    old_emb = np.eye(3, dtype=np.float32)
    new_emb = np.stack([old_emb[1], old_emb[2] + 1e-3, np.ones(3, np.float32)])  # tree embeds differently now
    np.testing.assert_array_equal(concepts_changed(m, old_emb, new_emb), [True, False, True])
    assert concepts_changed(m, None, new_emb).all()


def test_caption_changed_compares_concept_sets_under_todays_ids():
    old_map = np.array([2, 0, 1])  # earlier ids 0, 1, 2 are today's 2, 0, 1
    old_caps = pa.chunked_array([pa.array([[0, 1], [2], [], [1]], pa.list_(pa.int32()))])
    # today: row 0 the same set in another order, row 1 gained concept 0, row 2 still none, row 3 lost its only one
    offsets = np.array([0, 2, 4, 4, 4])
    ids = np.array([0, 2, 1, 0])
    got = caption_changed(old_caps, old_map, offsets, ids, np.arange(4))
    np.testing.assert_array_equal(got, [False, True, False, True])
    # an earlier concept no longer in the vocabulary changes the caption even if today's list looks the same
    assert caption_changed(old_caps, np.array([-1, 0, 1]), np.array([0, 1]), np.array([0]), np.array([0]))[0]


def test_ties_reordered_only_where_equal_scores_swap_id_order():
    ids = pa.chunked_array([pa.array([[0, 1, 2], [0, 1], [3, 4]], pa.list_(pa.int32()))])
    scores = pa.chunked_array([pa.array([[0.5, 0.5, 0.1], [0.5, 0.4], [0.2, 0.2]], pa.list_(pa.float32()))])
    old_map = np.array([5, 4, 0, 1, 2])  # 0 and 1 swap order; 3 and 4 keep it
    np.testing.assert_array_equal(ties_reordered(ids, scores, old_map), [True, False, False])


def test_carried_rows_take_todays_ids_and_caption_lists_and_keep_the_rest():
    from cocu_core.curation.archive import ARCHIVE_SCHEMA

    t = pa.table({"key": ["a", "b"], "caption": ["x", "y"], "caption_concept_ids": [[0], [1]],
                  "concept_ids": [[0, 1], [1]], "concepts": [["car", "dog"], ["dog"]],
                  "naive_scores": [[0.3, 0.2], [0.1]], "t2v_scores": [[0.9, 0.1], [0.4]],
                  "cluster_ids": [[0, 1], [0]], "neighbour_keys": [["b"], ["a"]]}, schema=ARCHIVE_SCHEMA)
    out = carried(t, np.array([1]), np.array([7, 3]), np.array([0, 1, 2]), np.array([7, 3]), np.array([1]))
    row = out.to_pylist()[0]
    assert row["concept_ids"] == [3] and row["caption_concept_ids"] == [3]
    assert row["concepts"] == ["dog"] and row["t2v_scores"] == [np.float32(0.4)] and row["neighbour_keys"] == ["a"]


def test_neighbour_rows_maps_keys_and_marks_a_key_gone():
    keys = pa.array(["a", "b", "c"])
    got = neighbour_rows(pa.chunked_array([pa.array([["c", "b"], ["zz"], []], pa.list_(pa.string()))]), keys, 2)
    np.testing.assert_array_equal(got, [[2, 1], [-1, -1], [-1, -1]])
