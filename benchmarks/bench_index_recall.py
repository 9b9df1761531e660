"""Index recall against search cost: a built index (the index stage's `image.index`) searched at several efSearch
(HNSW) or nprobe (IVF) values, recall@k against exact search on the stage's own query sample, CPU ms per query.

The index stage tunes the search parameter to `index.target_recall` (cocu_core/index/tune.py); this shows what each
setting buys. Queries are the same rows the index stage's recall uses (seed, 500 rows); the exact neighbours are
found once by a blockwise scan; searches run on one thread after one untimed search that pages the memory-mapped index
in (CPU seconds of this process / queries). Run:
    nice -n 19 .venv/bin/python benchmarks/bench_index_recall.py --root /tmp/cocu_scale_2000000 --values 142,256,512,1024
    nice -n 19 .venv/bin/python benchmarks/bench_index_recall.py --root /tmp/cocu_scale_2000000 --build IVF1024,Flat \
        --values 8,16,32,64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reachability(index) -> str:
    """Why: a vector no greedy walk can reach is never returned, whatever efSearch: count them. Level-0 links of
    every node (faiss's flat `neighbors` array, -1 = empty slot), breadth-first from every node present on level 1
    and above (the upper levels route searches to them)."""
    import faiss
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    h = faiss.downcast_index(index).hnsw if not hasattr(index, "hnsw") else index.hnsw
    n = index.ntotal
    offsets = faiss.vector_to_array(h.offsets).astype(np.int64)
    neighbors = faiss.vector_to_array(h.neighbors)
    levels = faiss.vector_to_array(h.levels)
    cum = faiss.vector_to_array(h.cum_nneighbor_per_level)
    width = int(cum[1])  # level-0 slots per node
    idx = offsets[:n, None] + np.arange(width)[None, :]
    nb = neighbors[idx]
    rows = np.repeat(np.arange(n), width)
    keep = nb.ravel() >= 0
    g = csr_matrix((np.ones(int(keep.sum()), np.int8), (rows[keep], nb.ravel()[keep])), shape=(n + 1, n + 1))
    upper = np.flatnonzero(levels > 1)  # levels[i] = 1 + top level of node i
    # one virtual root linked to every upper-level node
    root = csr_matrix((np.ones(len(upper), np.int8), (np.full(len(upper), n), upper)), shape=(n + 1, n + 1))
    order = breadth_first_order((g + root).tocsr(), n, directed=True, return_predecessors=False)
    reached = len(order) - 1
    in_deg = np.bincount(nb.ravel()[keep], minlength=n)
    return (f"  level-0 graph: {width} link slots per node, {keep.sum() / n:.1f} used on average; "
            f"{len(upper):,} nodes on upper levels; reachable from them over level 0: {reached:,} of {n:,} "
            f"({reached / n:.1%}); nodes no other node links to: {int((in_deg == 0).sum()):,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="a workdir with embed/ and index/ (e.g. a bench_scale root)")
    ap.add_argument("--name", default="image", choices=("image", "caption"))
    ap.add_argument("--values", default="64,128,256,512,1024", help="efSearch (HNSW) or nprobe (IVF) values")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="the pipeline config's seed (the index stage's query sample)")
    ap.add_argument("--build", default=None, metavar="INDEX_KEY",
                    help="first build an index of this faiss key over root's embeddings with the index stage's own "
                         "build (cocu_core.index.build.build_index, rows of every shard) into --out/index, then measure that one")
    ap.add_argument("--out", type=Path, default=None, help="folder of the --build index")
    ap.add_argument("--query-ms", type=float, default=10.0, help="--build: index.max_index_query_time_ms")
    ap.add_argument("--memory", default="8G", help="--build: index.max_index_memory_usage")
    ap.add_argument("--reachability", action="store_true",
                    help="HNSW: count the vectors a search can reach at all (breadth-first over the level-0 links "
                         "from the nodes the upper levels can lead to)")
    args = ap.parse_args()

    import faiss

    from cocu_core.embeddings.store import open_npy
    from cocu_core.index import build as ib
    from cocu_core.io import read_json

    x_path = args.root / "embed" / ("img_emb.npy" if args.name == "image" else "text_emb.npy")
    x = open_npy(x_path)
    index_dir = args.root / "index"
    if args.build:
        from cocu_core.config import IndexConfig
        from cocu_core.index.policy import plan_index
        from cocu_core.io import write_json_atomic

        index_dir = (args.out or Path(f"/tmp/cocu_index_{args.build.replace(',', '_')}")) / "index"
        index_dir.mkdir(parents=True, exist_ok=True)
        icfg = IndexConfig(index_key=args.build, max_index_query_time_ms=args.query_ms,
                           max_index_memory_usage=args.memory, current_memory_available="16G", rerank="never")
        plan = plan_index(len(x), x.shape[1], icfg)
        c0, t0 = time.process_time(), time.time()
        built, _ = ib.build_index(x, plan, icfg, [args.seed, 13, len(args.name)])
        size = ib.write_index(built, index_dir / f"{args.name}.index")
        write_json_atomic(index_dir / f"{args.name}_infos.json", {"index_key": args.build, "index_param": None})
        print(f"built {args.build} over {len(x):,} x {x.shape[1]} with the index stage's build_index in "
              f"{time.time() - t0:.0f} s ({time.process_time() - c0:.0f} CPU s), {size / 2**30:.2f} GiB")
    index = ib.load_index(index_dir, args.name)
    infos = read_json(index_dir / f"{args.name}_infos.json")
    rng = np.random.default_rng([args.seed, 11])
    queries = np.sort(rng.choice(len(x), size=min(args.queries, len(x)), replace=False))
    q = np.ascontiguousarray(x[queries], dtype=np.float32)
    t0 = time.time()
    de, _ = ib.exact_search(x, q, args.k)
    print(f"{index_dir}: {args.name} index {infos.get('index_key')} over {index.ntotal:,} x {index.d}, tuned to "
          f"{infos.get('index_param')}; exact top-{args.k} of {len(q)} queries in {time.time() - t0:.0f} s")
    faiss.omp_set_num_threads(1)
    hnsw = "HNSW" in str(infos.get("index_key")) and "IVF" not in str(infos.get("index_key"))
    param = "efSearch" if hnsw else "nprobe"
    if args.reachability and hnsw:
        print(reachability(index))
    values = [int(s) for s in args.values.split(",")]
    inner = getattr(index, "index", index)  # a re-ranked index: the parameter is the wrapped faiss index's
    faiss.ParameterSpace().set_index_parameters(inner, f"{param}={max(values)}")
    index.search(q, args.k)  # untimed: pages of the memory-mapped index come in from disk here
    print(f"  {param:>9} {'recall@' + str(args.k):>9} {'self first':>10} {'CPU ms/query':>13}")
    for v in values:
        faiss.ParameterSpace().set_index_parameters(inner, f"{param}={v}")
        c0 = time.process_time()
        _, ia = index.search(q, args.k)
        ms = (time.process_time() - c0) / len(q) * 1000
        xa = x[np.clip(ia, 0, None)].astype(np.float32)  # tie-aware, as the index stage's recall_at_k
        true = np.einsum("qkd,qd->qk", xa, q)
        recall = float(np.mean(((true >= de[:, -1:] - 1e-5) & (ia >= 0)).sum(axis=1) / args.k))
        self_first = float(np.mean((ia[:, 0] == queries) | (true[:, 0] >= np.sum(q * q, axis=1) - 1e-4)))
        print(f"  {v:>9} {recall:>9.3f} {self_first:>10.3f} {ms:>13.2f}")


if __name__ == "__main__":
    main()
