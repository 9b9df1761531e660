"""Incremental re-curation against a full one, side by side in one run (issue 24 part 4).

A synthetic corpus of `--n` pairs (bench_scale's fair corpus, shards of `--shard-size`) is curated once; then `--grow`
of it is appended as new shards (the same download generation, as a grown url list gives). Two work folders then
re-curate the grown corpus through the real stage functions:
  - incremental: the earlier index grown by the new vectors (quantiser kept, search parameter re-tuned), only the
    archive rows that can change recomputed (`curation.incremental`), the others carried over;
  - full: the same embeddings, the index built afresh and every row curated.
Each timed part is index + vocabulary + concept embeddings + curation inputs + curate (the embed assembly, the same
in both, is printed apart). CPU seconds are this process's (faiss's and torch's threads included).

Run (nice: the cores are shared):  nice -n 19 .venv/bin/python benchmarks/bench_recurate.py --n 200000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("NLTK_DATA", str(ROOT / ".nltk_data"))

from bench_scale import BENCH_INDEX, CLIP_MODEL, ENCODER_FP, World, bench_config, write_corpus, write_part  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def grow_corpus(w: Path, n: int, extra: int, shard_size: int, cfg) -> int:
    """Why: append `extra` pairs as new shards of the same download generation (the embed parts of a grown list)."""
    from cocu_core.io import read_json, write_json_atomic
    from cocu_core.stages.embed import part_key_for

    dl = read_json(w / "download" / "manifest.json")
    key = part_key_for(w / "download", ENCODER_FP, cfg)
    world, first = World(0), int(dl["n_shards"])
    total = n + extra
    n_shards = -(-total // shard_size)
    for s in range(first, n_shards):
        write_part(w / "embed" / "parts", world, s, min(shard_size, total - s * shard_size), shard_size, key)
    dl.update(n_shards=n_shards, generation=dl.get("generation", dl["cache_key"]), cache_key=f"{dl['cache_key']}+{total}")
    dl["counts"] = {**dl.get("counts", {}), "success": total, "input": total}
    write_json_atomic(w / "download" / "manifest.json", dl)
    return n_shards - first


def curate_all(cfg) -> tuple[dict[str, Any], dict[str, float]]:
    """Why: index, vocabulary, concepts, inputs and every shard through the stage functions, each part's CPU time."""
    from cocu_core.curation.data import load_curation_data, shard_names
    from cocu_core.layout import stage_dir
    from cocu_core.stages.concepts import concepts_stage
    from cocu_core.stages.curate import Prepared, curation_upstream_fp, curate_shard_stage, load_indexes, \
        summarise_shards, with_carry
    from cocu_core.stages.index import index_stage
    from cocu_core.stages.vocabulary import vocabulary_stage

    w, cpu, out = cfg.workpath, {}, {}
    c = _cpu()
    out["index"] = index_stage(w / "embed", w / "index", cfg)
    cpu["index"] = _cpu() - c
    c = _cpu()
    vocabulary_stage(w / "embed", w / "vocabulary", cfg)
    emb, _ = concepts_stage(w / "vocabulary", w / "concept_emb", cfg, ENCODER_FP,
                            World(0).encode_text_fn(cfg.encoder.templates))
    data = load_curation_data(w / "embed", w / "vocabulary", emb, cfg.curation.max_ngram)
    cpu["vocabulary+inputs"] = _cpu() - c
    c = _cpu()
    prep = with_carry(Prepared(data, load_indexes(cfg), ENCODER_FP), cfg)
    cpu["incremental plan"] = _cpu() - c
    c = _cpu()
    upstream = curation_upstream_fp(cfg, ENCODER_FP)
    res = [curate_shard_stage(data, s, stage_dir(cfg, "curate"), cfg, upstream, ENCODER_FP, prep.indexes["image"],
                              None, carry=prep.carry) for s in shard_names(data)]
    cpu["curate"] = _cpu() - c
    out["curate"] = summarise_shards(res)
    return out, cpu


def assemble(cfg) -> float:
    from cocu_core.stages.embed import embed_stage

    c = _cpu()
    embed_stage(cfg.workpath / "download", cfg.workpath / "embed", cfg, CLIP_MODEL, ENCODER_FP, progress=False)
    return _cpu() - c


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="pairs curated first (default 200000)")
    ap.add_argument("--grow", type=float, default=0.05, help="fraction of --n appended (default 0.05)")
    ap.add_argument("--shard-size", type=int, default=10_000, help="pairs a shard (default 10000)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/cocu_bench_recurate"), help="work folders go here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    extra = int(round(args.n * args.grow))
    shutil.rmtree(args.root, ignore_errors=True)
    inc = bench_config(args.root / "incremental", args.n, index=BENCH_INDEX)
    t0 = time.time()
    write_corpus(inc.workpath, args.n, args.shard_size, inc)
    assemble(inc)
    first, first_cpu = curate_all(inc)
    print(f"first curation of {args.n:,} pairs: {sum(first_cpu.values()):.0f} CPU s ({time.time() - t0:.0f} s wall)",
          flush=True)
    new_shards = grow_corpus(inc.workpath, args.n, extra, args.shard_size, inc)
    asm_cpu = assemble(inc)
    full = bench_config(args.root / "full", args.n, index=BENCH_INDEX)
    full.workpath.mkdir(parents=True)
    for d in ("download", "embed"):
        shutil.copytree(inc.workpath / d, full.workpath / d, copy_function=os.link)
    shutil.copy2(inc.workpath / "voc_class_names.txt", full.workpath / "voc_class_names.txt")
    t1 = time.time()
    grown, inc_cpu = curate_all(inc)
    t2 = time.time()
    fresh, full_cpu = curate_all(full)
    t3 = time.time()
    gi, fi = grown["index"]["image"], fresh["index"]["image"]
    ratio = sum(inc_cpu.values()) / sum(full_cpu.values())
    rows = [("part", "incremental CPU s", "full CPU s")] + [(k, f"{inc_cpu[k]:.1f}", f"{full_cpu[k]:.1f}") for k in inc_cpu]
    print(f"\n+{extra:,} pairs ({args.grow:.0%}, {new_shards} new shard(s)) on {args.n:,}; embed assembly "
          f"{asm_cpu:.1f} CPU s (the same for both, not counted)")
    for r in rows:
        print(f"  {r[0]:<18} {r[1]:>18} {r[2]:>12}")
    print(f"  {'total':<18} {sum(inc_cpu.values()):>18.1f} {sum(full_cpu.values()):>12.1f}   wall "
          f"{t2 - t1:.0f} s / {t3 - t2:.0f} s")
    ic, fc = grown["curate"], fresh["curate"]
    print(f"incremental / full CPU: {ratio:.3f}x (target <= 0.2x)")
    print(f"rows recomputed: incremental {ic['recomputed']:,} of {ic['images']:,} ({ic['new_neighbour']:,} earlier rows "
          f"with a new image among their 8 nearest, {ic['concepts_changed']:,} with changed concepts, "
          f"{ic['carried']:,} carried over); full {fc['recomputed']:,}")
    share = ic["new_neighbour"] / args.n
    expected = 1 - (1 - extra / (args.n + extra)) ** 8
    print(f"earlier rows with a new image among their 8 nearest: {share:.1%} (new pairs spread like the old ones: "
          f"about 1 - (1 - new/all)^8 = {expected:.1%}); recomputing them is required for the exact result, so the "
          f"curate part cannot cost less than about {(extra + ic['new_neighbour']) / (args.n + extra):.2f} of a full one")
    print(f"image index: incremental {gi['index_key']} grown from {gi['grown_from']} ({gi['index_param']}, recall@8 "
          f"{gi['recall@8']}, target {gi['target_recall']}, met {gi['target_met']}); full {fi['index_key']} "
          f"({fi['index_param']}, recall@8 {fi['recall@8']})")
    print("RESULT " + json.dumps({"n": args.n, "extra": extra, "ratio": round(ratio, 4), "incremental_cpu": inc_cpu,
                                  "full_cpu": full_cpu, "assemble_cpu": asm_cpu, "first_cpu": first_cpu,
                                  "curate_incremental": ic, "curate_full": fc,
                                  "index_incremental": {k: gi[k] for k in ("index_key", "index_param", "recall@8",
                                                                           "grown_from", "target_met")},
                                  "index_full": {k: fi[k] for k in ("index_key", "index_param", "recall@8")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
