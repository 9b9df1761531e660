"""FAISS indexes built with faiss directly: the policy's key (`policy.py`) trained on a random sample drawn across
every row (so every shard), vectors added in batches from the memory-mapped embeddings, written atomically; search
parameters and the optional exact re-rank applied on load; recall against exact search measured in chunks; the checks
that refuse an index built over other embeddings.

autofaiss is not used for these indexes: it trains IVF on the first rows (shard order, so one source), tunes its
search parameter for speed alone, never sets efConstruction, and builds some keys (e.g. `IVF65536_HNSW32,Flat` with
the inner-product metric) as a plain HNSW graph. A direct build is short and does what the key says.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from cocu_core.config import IndexConfig
from cocu_core.embeddings.store import open_npy
from cocu_core.errors import CocuError
from cocu_core.index.policy import Plan, parse_bytes
from cocu_core.io import atomic_path, read_json, read_manifest

INDEXES = {"image": "img_emb.npy", "caption": "text_emb.npy"}
EXACT_CHUNK = 1 << 17  # rows per block of the exact search that recall is measured against
ADD_BATCH = 1 << 16  # rows converted to float32 and added per step (bounds the build's extra memory)
READ_CHUNK = 1 << 15  # sorted sample rows gathered from the memory map per step


class IndexMismatchError(ValueError, CocuError):
    """An index that does not belong to these embeddings (another encoder or corpus); the message names it."""


def metric_of(name: str) -> int:
    import faiss

    return faiss.METRIC_INNER_PRODUCT if name == "ip" else faiss.METRIC_L2


def training_rows(n: int, size: int, seed: Any) -> np.ndarray:
    """Why: the coarse quantiser must see every source: a uniform sample over all rows (the corpus is in shard, i.e.
    source, order), sorted so the memory map is read front to back."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def gather(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Why: float32 copies of chosen rows of a (memory-mapped, float16 or float32) array, a chunk at a time."""
    out = np.empty((len(rows), x.shape[1]), np.float32)
    for lo in range(0, len(rows), READ_CHUNK):
        out[lo:lo + READ_CHUNK] = x[rows[lo:lo + READ_CHUNK]]
    return out


def train_size(plan: Plan, n: int, d: int, icfg: IndexConfig) -> int:
    """Why: `train_per_list` rows a list (PQ codebooks need 256 x 39), capped by the build's memory allowance."""
    if plan.param != "nprobe" and "PQ" not in plan.codes and "SQ" not in plan.codes:
        return 0
    want = max(plan.nlist * icfg.train_per_list, 256 * 39 if "PQ" in plan.codes else 0, 1000)
    cap = parse_bytes(icfg.current_memory_available) // 2 // (4 * d)
    return int(min(n, want, max(cap, plan.nlist * 39)))


def new_index(plan: Plan, d: int, icfg: IndexConfig) -> Any:
    """Why: the factory key with our training settings (k-means iterations, no silent subsampling, efConstruction)."""
    import faiss

    index = faiss.index_factory(d, plan.key, metric_of(icfg.metric_type))
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.cp.niter = icfg.train_iters
        ivf.cp.max_points_per_centroid = 1 << 30  # the sample is already drawn across all rows: use all of it
        q = faiss.downcast_index(ivf.quantizer)
        if hasattr(q, "hnsw"):
            q.hnsw.efConstruction = icfg.hnsw_ef_construction
    h = faiss.downcast_index(index)
    if hasattr(h, "hnsw"):
        h.hnsw.efConstruction = icfg.hnsw_ef_construction
    return index


def build_index(x: np.ndarray, plan: Plan, icfg: IndexConfig, seed: Any,
                log: Optional[Callable[[str], None]] = None, name: str = "index") -> tuple[Any, dict[str, Any]]:
    """Why: train on a sample across all rows, then add every row in batches (memory: the index + one batch)."""
    n, d = x.shape
    index = new_index(plan, d, icfg)
    info: dict[str, Any] = {"train_rows": 0}
    t0 = time.time()
    if not index.is_trained:
        rows = training_rows(n, train_size(plan, n, d, icfg), seed)
        index.train(gather(x, rows))
        info.update(train_rows=int(len(rows)), train_seconds=round(time.time() - t0, 2))
        info["_train_sample"] = rows
    t1, step = time.time(), max(1, n // ADD_BATCH // 10) * ADD_BATCH
    for lo in range(0, n, ADD_BATCH):
        index.add(np.ascontiguousarray(x[lo:lo + ADD_BATCH], dtype=np.float32))
        if log and lo and lo % step == 0:
            log(f"index {name}: {lo:,} of {n:,} vectors added ({time.time() - t1:.0f} s)")
    info["add_seconds"] = round(time.time() - t1, 2)
    return index, info


def write_index(index: Any, path: Path) -> int:
    """Why: readers never see a half-written index (temporary name, then rename); returns its bytes."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path.stat().st_size


def apply_params(index: Any, index_param: Optional[str]) -> Any:
    """Why: the tuned nprobe / efSearch (a faiss ParameterSpace string), on the wrapped index when re-ranked."""
    import faiss

    if index_param:
        faiss.ParameterSpace().set_index_parameters(getattr(index, "index", index), index_param)
    return index


class RerankIndex:
    """Why: compressed codes pick candidates, exact scores from the memory-mapped embeddings order them, so SQ/PQ
    codes need not cost recall; searched like a faiss index (`search`, `ntotal`, `d`)."""

    def __init__(self, index: Any, x: np.ndarray, factor: int, metric: str = "ip", chunk: int = 1024):
        self.index, self.x, self.factor, self.metric, self.chunk = index, x, factor, metric, chunk
        self.ntotal, self.d = int(index.ntotal), int(index.d)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(q, dtype=np.float32)
        kc = min(self.ntotal, k * self.factor)
        _, cand = self.index.search(q, kc)
        out_d = np.empty((len(q), k), np.float32)
        out_i = np.empty((len(q), k), np.int64)
        for lo in range(0, len(q), self.chunk):
            c = cand[lo:lo + self.chunk]
            xs = gather(self.x, np.clip(c, 0, None).ravel()).reshape(*c.shape, -1)
            qs = q[lo:lo + self.chunk]
            s = np.einsum("qkd,qd->qk", xs, qs) if self.metric == "ip" else -np.sum((xs - qs[:, None]) ** 2, axis=2)
            s[c < 0] = -np.inf
            order = np.argsort(-s, axis=1, kind="stable")[:, :k]
            i = np.take_along_axis(c, order, 1)
            dd = np.take_along_axis(s, order, 1)
            if kc < k:
                i = np.pad(i, ((0, 0), (0, k - kc)), constant_values=-1)
                dd = np.pad(dd, ((0, 0), (0, k - kc)), constant_values=-np.inf)
            out_i[lo:lo + self.chunk] = i
            out_d[lo:lo + self.chunk] = dd if self.metric == "ip" else -dd
        return out_d, out_i


def exact_search(x: np.ndarray, q: np.ndarray, k: int, metric: str = "ip",
                 chunk: int = EXACT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Why: exact top-k by scanning `x` (possibly memory-mapped) block by block, so memory is bounded by a block.

    Returns faiss's convention: inner products descending, or squared L2 distances ascending."""
    import faiss

    q = np.ascontiguousarray(q, dtype=np.float32)
    best_d = np.full((len(q), 0), 0, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for lo in range(0, len(x), chunk):
        block = np.ascontiguousarray(x[lo:lo + chunk], dtype=np.float32)
        flat = faiss.IndexFlatIP(block.shape[1]) if metric == "ip" else faiss.IndexFlatL2(block.shape[1])
        flat.add(block)
        d, i = flat.search(q, min(k, len(block)))
        best_d = np.concatenate([best_d, d], axis=1)
        best_i = np.concatenate([best_i, i + lo], axis=1)
        order = np.argsort(-best_d if metric == "ip" else best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    return best_d, best_i


def recall_at_k(index: Any, x: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> dict[str, float]:
    """Why: measure what approximation cost: recall@k of `index` against exact search (tie-aware), plus self-retrieval."""
    q = np.ascontiguousarray(x[queries], dtype=np.float32)
    k = min(k, len(x))
    de, _ = exact_search(x, q, k, metric)
    _, ia = index.search(q, k)
    # Tie-aware recall: an approximate hit counts if its *true* score (recomputed from the vectors, not the
    # index's possibly quantised one) is as good as the exact k-th neighbour's, so duplicate vectors
    # (identical captions) returned in another order are not misses.
    xa = x[np.clip(ia, 0, None)].astype(np.float32)
    true = np.einsum("qkd,qd->qk", xa, q) if metric == "ip" else -np.sum((xa - q[:, None, :]) ** 2, axis=2)
    kth = de[:, -1:] if metric == "ip" else -de[:, -1:]
    good = (true >= kth - 1e-5) & (ia >= 0)
    recall = float(np.mean(good.sum(axis=1) / k))
    # Self-hit: the query itself comes first, or a vector identical to it (duplicate captions) ties for first.
    self_score = np.sum(q * q, axis=1) if metric == "ip" else np.zeros(len(q))
    tie = true[:, 0] >= self_score - 1e-4
    self_first = float(np.mean((ia[:, 0] == queries) | tie))
    return {f"recall@{k}": recall, "self_first": self_first}


def check_index_shape(index: Any, n: int, dim: int, what: str) -> None:
    """Why: an index over another corpus (size) or another encoder (width) would return meaningless neighbours."""
    if int(index.ntotal) != n or int(index.d) != dim:
        raise IndexMismatchError(f"{what} holds {index.ntotal} vectors of width {index.d}, but the embeddings are "
                                 f"{n} x {dim}: it was built for other embeddings; re-run the index stage")


def check_index_dir(index_dir: str | Path, embed_dir: str | Path) -> None:
    """Why: refuse indexes the index stage built over other embeddings (another encoder, another download),
    naming both encoders, before any archive is written."""
    im, em = read_manifest(index_dir), read_manifest(embed_dir)
    if not im:
        raise FileNotFoundError(f"no finished index stage in {index_dir}; run the index stage first")
    if not em:
        raise FileNotFoundError(f"no finished embed stage in {embed_dir}; run the embed stage first")
    if im.get("inputs_fingerprint") != em.get("cache_key"):
        theirs = im.get("clip_model") or "unrecorded encoder"
        raise IndexMismatchError(
            f"{Path(index_dir) / 'image.index'} was built over other embeddings ({theirs}, embed key "
            f"{im.get('inputs_fingerprint')}) than {embed_dir} ({em.get('clip_model')}, key {em.get('cache_key')}); "
            "re-run the index stage")


def load_index(out_dir: str | Path, name: str = "image", embed_dir: Optional[str | Path] = None,
               mmap: bool = True) -> Any:
    """Why: readers get the index with its tuned search parameters (nprobe, efSearch) applied, wrapped in the exact
    re-rank when it was tuned with one; with `embed_dir`, an index built over other embeddings is refused.

    With `mmap` the file is memory-mapped read-only (faiss IO_FLAG_MMAP_IFC): vectors, codes and graph are pages
    of the file, shared by every process on the machine and dropped by the kernel under pressure, not heap."""
    import faiss

    out = Path(out_dir)
    path = out / f"{name}.index"
    if not path.is_file():
        raise FileNotFoundError(f"no {name} index at {path}; run the index stage first")
    if embed_dir is not None:
        check_index_dir(out, embed_dir)
    infos = read_json(out / f"{name}_infos.json") if (out / f"{name}_infos.json").is_file() else {}
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise IndexMismatchError(f"{path} is not a readable faiss index ({str(exc).splitlines()[0]}); "
                                 "re-run the index stage") from None
    if infos.get("rerank_factor"):
        emb = out / infos["embeddings"]
        if not emb.is_file():
            raise FileNotFoundError(f"{path} re-ranks from {emb}, which is missing; re-run the embed and index stages")
        index = RerankIndex(index, open_npy(emb), int(infos["rerank_factor"]), infos.get("metric_type", "ip"))
    return apply_params(index, infos.get("index_param"))
