"""Tuning the search parameter to a recall target: the smallest nprobe / efSearch whose recall@k against exact search
(measured as curation uses the index: k + 1 searched, the query itself dropped, ties counted) reaches
`index.target_recall` on one half of the held-out queries, reported on the other half.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from cocu_core.config import IndexConfig
from cocu_core.errors import CocuError
from cocu_core.index.build import apply_params, exact_search, gather
from cocu_core.index.policy import Plan

TIE = 1e-5  # a neighbour as good as the exact k-th (duplicates, equal scores) is a hit


class IndexRecallError(RuntimeError, CocuError):
    """No search setting within the query-time budget reaches the recall target; the message says what was reached."""


def scores(x: np.ndarray, q: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Why: true scores (higher is better) of found rows, recomputed from the vectors, not the index's codes."""
    xs = gather(x, np.clip(ids, 0, None).ravel()).reshape(*ids.shape, -1)
    s = np.einsum("qkd,qd->qk", xs, q) if metric == "ip" else -np.sum((xs - q[:, None]) ** 2, axis=2)
    return np.where(ids >= 0, s, -np.inf)


def drop_self(found: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Why: what curation keeps (neighbours.search_neighbours): the query's own row removed, the first k others."""
    found = np.where(found == queries[:, None], -1, found.astype(np.int64))
    order = np.argsort(found < 0, axis=1, kind="stable")
    found = np.take_along_axis(found, order, axis=1)[:, :k]
    if found.shape[1] < k:
        found = np.pad(found, ((0, 0), (0, k - found.shape[1])), constant_values=-1)
    return found


def exact_kth(x: np.ndarray, q: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Why: the score of the k-th exact neighbour other than the query itself: the bar a found neighbour must clear."""
    _, ie = exact_search(x, q, k + 1, metric)
    return scores(x, q, drop_self(ie, queries, k), metric)[:, k - 1]


def neighbour_recall(index: Any, x: np.ndarray, q: np.ndarray, queries: np.ndarray, kth: np.ndarray, k: int,
                     metric: str) -> tuple[float, float, float]:
    """Why: (recall@k with the query dropped, self-first rate, wall ms per query) of one search setting."""
    t0 = time.perf_counter()
    _, found = index.search(q, k + 1)
    ms = (time.perf_counter() - t0) * 1000 / max(1, len(q))
    nb = drop_self(found, queries, k)
    good = (scores(x, q, nb, metric) >= kth[:, None] - TIE) & (nb >= 0)
    first = scores(x, q, found[:, :1], metric)[:, 0]
    own = np.sum(q * q, axis=1) if metric == "ip" else np.zeros(len(q))
    self_first = float(np.mean((found[:, 0] == queries) | (first >= own - 1e-4)))
    return float(np.mean(good.sum(axis=1) / k)), self_first, ms


def candidates(plan: Plan, ntotal: int) -> list[int]:
    """Why: the values tried, smallest first (1, 2, 3, 4, 6, 8, 12, ...): nprobe up to nlist, efSearch up to 8192."""
    top = plan.nlist if plan.param == "nprobe" else 8192
    lo = 1 if plan.param == "nprobe" else 16
    vals, v = [], lo
    while v < top:
        vals += [v] + ([v * 3 // 2] if v * 3 // 2 < top and v >= 2 else [])
        v *= 2
    return sorted(set(vals + [top])) if top >= lo else [top]


def param_string(plan: Plan, value: int) -> str:
    """Why: the faiss ParameterSpace string of one value (an HNSW quantiser gets a beam wide enough for nprobe)."""
    if plan.param == "nprobe" and "_HNSW" in plan.key:
        return f"nprobe={value},quantizer_efSearch={max(64, 2 * value)}"
    return f"{plan.param}={value}"


def split_queries(n: int, size: int, seed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Why: held-out query rows, one half to tune on, the other to report (both sorted, disjoint)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(size, n), replace=False)
    half = max(1, len(rows) // 2)
    return np.sort(rows[:half]), np.sort(rows[half:] if len(rows) > 1 else rows)


def tune(index: Any, plan: Plan, x: np.ndarray, icfg: IndexConfig, seed: Any, name: str = "index",
         log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Why: the smallest search setting reaching `target_recall` within `max_index_query_time_ms`, its recall on the
    other half of the queries; unreachable stops with a one-line error unless `accept_lower_recall` (then a warning)."""
    metric, n = icfg.metric_type, int(index.ntotal)
    k = max(1, min(icfg.recall_k, n - 1))
    tq, rq = split_queries(n, icfg.recall_sample, seed)
    xt, xr = gather(x, tq), gather(x, rq)
    kt, kr = exact_kth(x, xt, tq, k, metric), exact_kth(x, xr, rq, k, metric)
    tried: list[dict[str, Any]] = []
    chosen: Optional[dict[str, Any]] = None
    for v in (candidates(plan, n) if plan.param else [None]):
        p = param_string(plan, v) if v is not None else None
        apply_params(index, p)
        rec, _, ms = neighbour_recall(index, x, xt, tq, kt, k, metric)
        tried.append({"param": p, "recall": round(rec, 4), "ms": round(ms, 3)})
        if ms > icfg.max_index_query_time_ms and v is not None:
            break
        if rec >= icfg.target_recall or v is None:
            chosen = tried[-1]
            break
    within = [t for t in tried if t["ms"] <= icfg.max_index_query_time_ms or t["param"] is None]
    met = chosen is not None
    if not met:
        best = max(within or tried[:1], key=lambda t: t["recall"])
        what = (f"index {name} ({plan.key}): recall@{k} {best['recall']:.3f} at {best['param']} is the best within "
                f"index.max_index_query_time_ms {icfg.max_index_query_time_ms:g} ms (tried up to {tried[-1]['param']}, "
                f"{tried[-1]['ms']:.2f} ms), below index.target_recall {icfg.target_recall:g}")
        if not icfg.accept_lower_recall:
            raise IndexRecallError(f"{what}; raise index.max_index_query_time_ms or index.max_index_memory_usage, "
                                   "or set index.accept_lower_recall: true")
        import warnings

        warnings.warn(what + " (accepted: index.accept_lower_recall)", stacklevel=2)
        if log:
            log("warning: " + what + " (accepted: index.accept_lower_recall)")
        chosen = best
    apply_params(index, chosen["param"])
    rec, self_first, ms = neighbour_recall(index, x, xr, rq, kr, k, metric)
    return {"index_param": chosen["param"], "target_recall": icfg.target_recall, "target_met": met,
            "recall_tune": chosen["recall"], f"recall@{k}": round(rec, 4), "self_first": round(self_first, 4),
            "query_ms": round(ms, 3), "tuning": tried, "recall_queries": int(len(rq)), "tune_queries": int(len(tq))}
