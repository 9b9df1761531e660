"""Growing an index by the rows a re-curation appended, instead of rebuilding it.

The embed stage appends a grown list's pairs as new shards after the finished ones and never rewrites an old shard, so
the earlier index's rows are a prefix of today's embeddings. That prefix is checked (same embeddings generation and
encoder, every earlier shard at the same rows, the same index settings); then the new rows are added to the earlier
index with its trained coarse quantiser and codes, and the caller re-tunes the search parameter. The quantiser is
retrained (a full build) once the index holds more than `index.retrain_growth` times the vectors it was trained on, when
today's policy would choose another kind of index or other codes, or when the grown index misses the recall target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from cocu_core.config import IndexConfig
from cocu_core.index.build import ADD_BATCH
from cocu_core.index.policy import Plan


def growth_base(prev: Optional[Mapping[str, Any]], fields: Mapping[str, Any], embed: Mapping[str, Any],
                ranges: Mapping[str, tuple[int, int]], n: int, icfg: IndexConfig) -> tuple[Optional[int], str]:
    """Why: the rows the earlier index holds that are unchanged today (grow from there), or why it must be rebuilt."""
    if not icfg.grow:
        return None, "index.grow is off"
    if not prev:
        return None, "no earlier index"
    if prev.get("config_fields") != dict(fields):
        return None, "the index settings changed"
    key = embed.get("part_key")
    if not key or prev.get("part_key") != key or prev.get("clip_model") != embed.get("clip_model"):
        return None, "the earlier index is over other embeddings (another download generation or encoder)"
    old = {s: (int(a), int(b)) for s, (a, b) in (prev.get("shard_rows") or {}).items()}
    if not old:
        return None, "the earlier index records no shard rows"
    if any(ranges.get(s) != r for s, r in old.items()):
        return None, "an earlier shard's rows changed"
    n_old = max(b for _, b in old.values())
    if n_old >= n:
        return None, "no new rows"
    if any(a < n_old for s, (a, _) in ranges.items() if s not in old):
        return None, "new rows are not after the earlier ones"
    return n_old, ""


def plan_from_infos(infos: Mapping[str, Any]) -> Plan:
    """Why: the plan an earlier index was built to (its key, lists, codes), which a grown index is tuned by."""
    param = infos.get("param")
    if param is None and infos.get("index_param"):
        param = str(infos["index_param"]).split("=")[0]
    return Plan(key=str(infos["index_key"]), param=param, nlist=int(infos.get("nlist") or 0),
                codes=str(infos.get("codes")), bytes_per_vector=float(infos.get("bytes_per_vector") or 0),
                rerank=bool(infos.get("rerank_factor")))


def can_grow(prev_row: Mapping[str, Any], prev_plan: Plan, plan: Plan, n: int, icfg: IndexConfig) -> str:
    """Why: '' when the earlier index may take the new rows, else why it is rebuilt."""
    trained = int(prev_row.get("trained_vectors") or prev_row.get("vectors") or 0)
    if not trained or n > icfg.retrain_growth * trained:
        return (f"{n:,} vectors are more than index.retrain_growth {icfg.retrain_growth:g} x the {trained:,} it was "
                "trained on")
    if (plan.param, plan.codes, plan.rerank) != (prev_plan.param, prev_plan.codes, prev_plan.rerank):
        return f"the policy now chooses {plan.key} (the earlier index is {prev_plan.key})"
    return ""


def grow_index(path: Path, x: np.ndarray, n_old: int) -> Any:
    """Why: the earlier index read whole (it is rewritten), the rows after `n_old` added in batches."""
    import faiss

    index = faiss.read_index(str(path))
    if int(index.ntotal) != n_old:
        raise ValueError(f"{path} holds {index.ntotal} vectors, its manifest says {n_old}")
    for lo in range(n_old, x.shape[0], ADD_BATCH):
        index.add(np.ascontiguousarray(x[lo:lo + ADD_BATCH], dtype=np.float32))
    return index
