"""Which faiss index a corpus gets: exact below a size, IVF above it, codes by the memory budget, re-rank when lossy.

Pure arithmetic over (rows, width, config): no faiss import, so the choice is testable and printable on its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cocu_core.config import IndexConfig
from cocu_core.errors import CocuError

ID_BYTES = 8  # faiss stores one int64 id per vector in every inverted list
PQ_M = (256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4)  # PQ sub-quantisers tried, largest (most accurate) first
MAX_NLIST = 1 << 18


class IndexBudgetError(ValueError, CocuError):
    """The memory budget cannot hold even the smallest codes; the message names the budget and the need."""


@dataclass(frozen=True)
class Plan:
    """What to build: the faiss factory key, its search parameter's name, its lists and whether results are re-ranked."""

    key: str
    param: str | None  # "nprobe", "efSearch" or None (exact search)
    nlist: int
    codes: str  # "Flat", "SQ8", "PQ<m>", or the forced key's own
    bytes_per_vector: float
    rerank: bool


def parse_bytes(text: str) -> int:
    """Why: budgets are written like autofaiss's (`2G`, `512M`, `16GB`, a plain number of bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", str(text))
    if not m:
        raise IndexBudgetError(f"unreadable memory size {text!r}: write e.g. 2G, 512M or a number of bytes")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def pow2_near(x: float) -> int:
    """Why: nlist as a power of two (faiss k-means and HNSW quantisers like them), the nearest in log scale."""
    return 1 << max(0, int(round(math.log2(max(float(x), 1.0)))))


def choose_nlist(n: int, icfg: IndexConfig) -> int:
    """Why: lists of about `list_size` vectors keep one probe's cost flat as N grows; k-means needs 39+ rows a list."""
    nlist = pow2_near(n / icfg.list_size)
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return int(min(nlist, MAX_NLIST))


def _lossy(codes: str) -> bool:
    return bool(re.search(r"(^|,|_)(SQ|PQ|OPQ|LSH|RQ|LSQ)", codes))


def plan_index(n: int, d: int, icfg: IndexConfig) -> Plan:
    """Why: exact search for small corpora; else IVF (HNSW-assigned for many lists) with the most accurate codes that fit
    `max_index_memory_usage`; a forced `index_key` is built as given and only tuned."""
    rerank_of = {"always": lambda lossy: True, "never": lambda lossy: False, "auto": lambda lossy: lossy}[icfg.rerank]
    if icfg.index_key:
        key = icfg.index_key
        param = "nprobe" if "IVF" in key else ("efSearch" if "HNSW" in key else None)
        nl = re.search(r"IVF(\d+)", key)
        return Plan(key, param, int(nl.group(1)) if nl else 0, key, float("nan"), rerank_of(_lossy(key)))
    if n < icfg.exact_below:
        return Plan("Flat", None, 0, "Flat", 4.0 * d, False)
    budget = parse_bytes(icfg.max_index_memory_usage)
    nlist = choose_nlist(n, icfg)
    per = budget / n - ID_BYTES - nlist * d * 4 / n  # bytes a vector may take in codes
    if per >= 4 * d:
        codes, size = "Flat", 4 * d
    elif per >= d:
        codes, size = "SQ8", d
    else:
        fits = [m for m in PQ_M if d % m == 0 and m <= per]
        if not fits:
            need = (min(m for m in PQ_M if d % m == 0) + ID_BYTES) * n + nlist * d * 4
            raise IndexBudgetError(f"index.max_index_memory_usage {icfg.max_index_memory_usage} cannot hold {n:,} "
                                   f"vectors of width {d} (the smallest codes need {need / 2**30:.2f} GiB); raise it")
        codes, size = f"PQ{fits[0]}np", fits[0]  # np: no polysemous training (slow, unused by our search)
    quant = f"IVF{nlist}_HNSW32" if nlist >= icfg.hnsw_quantizer_from else f"IVF{nlist}"
    return Plan(f"{quant},{codes}", "nprobe", nlist, codes, float(size + ID_BYTES), rerank_of(codes != "Flat"))
