"""Sampling frequencies match the stated softmax probabilities (chi-square, 20k seeded draws)."""

from itertools import permutations

import numpy as np
import pytest
from scipy.stats import chisquare

from cocu_core.curation.archive import ArchiveEntry
from cocu_core.curation.sampling import ConceptSampler

DRAWS = 20_000
SCORES = np.array([2.0, 1.5, 1.2, 0.7, 0.3])
CLUSTERS = np.array([0, 1, 0, 2, 1])
NAMES = ["a", "b", "c", "d", "e"]


def _entry(scores=SCORES, clusters=CLUSTERS, names=NAMES, caption="the caption"):
    return ArchiveEntry(key="k", caption=caption, concepts=list(names), concept_ids=np.arange(len(names)),
                        scores=np.asarray(scores, float), cluster_ids=None if clusters is None else np.asarray(clusters),
                        caption_concept_ids=np.zeros(0, np.int64), neighbour_keys=[])


def _softmax(x):
    e = np.exp(np.asarray(x, float) - np.max(x))
    return e / e.sum()


def _plackett_luce(p, order):
    prob, left = 1.0, 1.0
    for i in order:
        prob *= p[i] / left
        left -= p[i]
    return prob


def test_cluster_sampling_first_draw_matches_softmax():
    sampler = ConceptSampler("cocu", k=3, seed=0)
    entry = _entry()
    g = _softmax([SCORES[CLUSTERS == c].mean() for c in range(3)])
    expected = np.array([g[CLUSTERS[i]] * _softmax(SCORES[CLUSTERS == CLUSTERS[i]])[
        list(np.flatnonzero(CLUSTERS == CLUSTERS[i])).index(i)] for i in range(5)])
    assert abs(expected.sum() - 1) < 1e-12
    first = np.array([sampler.sample_indices(entry)[0] for _ in range(DRAWS)])
    observed = np.bincount(first, minlength=5)
    assert chisquare(observed, expected * DRAWS).pvalue > 1e-3


def test_cluster_order_is_sequential_softmax_without_replacement():
    sampler = ConceptSampler("cocu", k=3, seed=1)
    entry = _entry()
    g = _softmax([SCORES[CLUSTERS == c].mean() for c in range(3)])
    perms = list(permutations(range(3)))
    expected = np.array([_plackett_luce(g, p) for p in perms])
    draws = [tuple(CLUSTERS[sampler.sample_indices(entry)]) for _ in range(DRAWS)]
    observed = np.array([sum(d == p for d in draws) for p in perms])
    assert chisquare(observed, expected * DRAWS).pvalue > 1e-3
    # One concept per cluster, never two from the same cluster.
    assert all(len(set(d)) == 3 for d in draws[:500])


def test_weighted_naive_sampling_matches_plackett_luce():
    sampler = ConceptSampler("v3", k=2, seed=2, naive_sampling="weighted")
    entry = _entry(clusters=None)
    p = _softmax(SCORES)
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    expected = np.array([_plackett_luce(p, pr) for pr in pairs])
    index = {pr: n for n, pr in enumerate(pairs)}
    observed = np.zeros(len(pairs))
    for _ in range(DRAWS):
        observed[index[tuple(sampler.sample_indices(entry))]] += 1
    assert chisquare(observed, expected * DRAWS).pvalue > 1e-3


def test_topk_and_padding_with_caption():
    entry = _entry(clusters=None)
    assert ConceptSampler("v2", k=3).sample(entry) == ["a", "b", "c"]
    short = _entry(scores=[0.9, 0.1], clusters=[0, 1], names=["x", "y"])
    assert sorted(ConceptSampler("cocu", k=3).sample(short)[:2]) == ["x", "y"]
    assert ConceptSampler("cocu", k=3).sample(short)[2] == "the caption"
    empty = _entry(scores=[], clusters=[], names=[])
    assert ConceptSampler("cocu", k=3).sample(empty) == ["the caption"] * 3
    assert ConceptSampler("baseline", k=2, naive_sampling="weighted").sample(empty) == ["the caption"] * 2
    # Fewer clusters than k: one concept per cluster, then the caption.
    two_clusters = _entry(clusters=[0, 1, 0, 1, 0])
    out = ConceptSampler("cocu", k=3, seed=3).sample(two_clusters)
    assert out[2] == "the caption" and out[0] != out[1]


def test_sampler_refuses_cluster_sampling_without_clusters():
    with pytest.raises(ValueError, match="'k'.*no cluster ids"):
        ConceptSampler("cocu", k=3).sample(_entry(clusters=None))


def test_seeded_sampler_is_reproducible():
    a = [ConceptSampler("cocu", k=3, seed=7).sample(_entry()) for _ in range(3)]
    s1, s2 = ConceptSampler("cocu", k=3, seed=7), ConceptSampler("cocu", k=3, seed=7)
    assert [s1.sample(_entry()) for _ in range(20)] == [s2.sample(_entry()) for _ in range(20)]
    assert a[0] == a[1] == a[2]


def test_defaults_bounds_and_messages_are_the_documented_ones():
    # the defaults are GroupViT's/CoCu's K = 3 prompts and seed 0
    d, ref = ConceptSampler("cocu"), ConceptSampler("cocu", k=3, seed=0)
    assert d.k == 3 and d.naive_sampling == "topk"
    assert [d.sample(_entry()) for _ in range(10)] == [ref.sample(_entry()) for _ in range(10)]
    # k = 1 is allowed (one prompt), 0 is not
    assert ConceptSampler("v2", k=1).sample(_entry(clusters=None)) == ["a"]
    assert len(ConceptSampler("cocu", k=1).sample(_entry())) == 1
    with pytest.raises(ValueError, match=r"^k must be >= 1, got 0$"):
        ConceptSampler("cocu", k=0)
    with pytest.raises(ValueError, match=r"^naive_sampling must be 'topk' or 'weighted', got 'nope'$"):
        ConceptSampler("v2", naive_sampling="nope")
    with pytest.raises(ValueError, match=r"^sample 'k': the archive has no cluster ids \(curated as a naive variant\)$"):
        ConceptSampler("cocu").sample(_entry(clusters=None))
