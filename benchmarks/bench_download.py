"""Download speed: our download stage against calling img2dataset directly, side by side on the same url list.

Both arms fetch the same toy-world JPEGs from the same loopback HTTP server with the same img2dataset settings
(processes, threads, shard size, resize, timeout, retries, webdataset output):

* ours:   `cocu_core.stages.download.download_stage` (reads and cleans the list, writes input.parquet, runs img2dataset in
          a child process tree that dies with it, journals finished shards, then collects samples.parquet and the report);
* direct: `img2dataset.download(**same settings)` in a fresh Python process on the url list as written (what a user
          would run by hand), no extra column.

Arms alternate order every repeat (ours first, then direct first, ...), each into an empty folder; the overhead ratio is
the median over repeats of ours' wall seconds / direct's, and the same for CPU seconds (this process, the loopback
server included, plus the finished children: img2dataset and its workers), which other jobs on shared cores move less.
Run (the cores are shared: nice):
    nice -n 19 .venv/bin/python benchmarks/bench_download.py [--n 4000] [--shard-size 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k, _v in {"NO_ALBUMENTATIONS_UPDATE": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "HF_HUB_OFFLINE": "1", "NLTK_DATA": str(ROOT / ".nltk_data")}.items():
    os.environ.setdefault(_k, _v)

DIRECT = """
import json, sys
if __name__ == "__main__":
    from img2dataset import download
    download(**json.load(open(sys.argv[1])))
"""


def toy_pairs(root: Path, n: int, seed: int = 5):
    """Why: `n` real toy-world pairs (64 px JPEGs + captions) to serve; returns (split folder, pairs table)."""
    from cocu_core.config import ToyWorldConfig
    from cocu_core.toyworld import generate_world, read_pairs

    generate_world(root, ToyWorldConfig(seed=seed, n_web=0, n_train=n, n_val=0), workers=2)
    return root / "train", read_pairs(root / "train")


def bench_config(workdir: Path, shard_size: int, **sections: Any):
    """Why: the toy config's download and encoder settings, with this benchmark's folder and shard size."""
    from cocu_core.config import load_config

    over: dict[str, Any] = {"workdir": str(workdir), "data": {"shard_size": shard_size}}
    for k, v in sections.items():
        over[k] = {**over.get(k, {}), **v}
    return load_config(ROOT / "configs" / "toy.yaml", over)


def direct_spec(cfg, url_list: Path, out: Path) -> dict[str, Any]:
    """Why: the settings download_stage gives img2dataset (see its `spec`), on the url list as written."""
    d = cfg.data
    return {"url_list": str(url_list), "input_format": "parquet", "url_col": "url", "caption_col": "caption",
            "output_format": "webdataset", "output_folder": str(out), "image_size": d.image_size,
            "resize_mode": d.resize_mode, "number_sample_per_shard": d.shard_size, "processes_count": d.processes,
            "thread_count": d.threads, "timeout": d.timeout, "retries": d.retries, "incremental_mode": "incremental",
            "enable_wandb": False, "distributor": "multiprocessing", "extract_exif": False, "oom_shard_count": 5}


def run_direct(spec: dict[str, Any], work: Path) -> int:
    """Why: img2dataset as a user calls it: one fresh process; returns its successes (from its shard stats)."""
    script, spec_f = work / "direct_i2d.py", work / "direct_spec.json"
    script.write_text(DIRECT)
    spec_f.write_text(json.dumps(spec))
    with open(work / "direct.log", "wb") as log:
        subprocess.run([sys.executable, str(script), str(spec_f)], stdout=log, stderr=subprocess.STDOUT, check=True)
    return sum(json.loads(f.read_text())["successes"] for f in Path(spec["output_folder"]).glob("*_stats.json"))


def cpu_seconds() -> float:
    """Why: CPU seconds of this process (its loopback server included) and of its finished children (img2dataset and
    its workers): moved less than wall time by other jobs on shared cores."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def print_arms(secs: dict[str, list[float]], cpu: dict[str, list[float]], n_ok: int, what: str) -> None:
    """Why: one table per benchmark: median wall and CPU seconds per arm, then ours/direct ratios (median of pairs)."""
    print(f"  {'arm':<8}{'median s':>10}{'images/s':>10}{'CPU s':>8}   wall runs (s)")
    for arm in secs:
        med = statistics.median(secs[arm])
        print(f"  {arm:<8}{med:>10.2f}{n_ok / med:>10.1f}{statistics.median(cpu[arm]):>8.1f}   "
              + " ".join(f"{s:.2f}" for s in secs[arm]))
    for arm in list(secs)[::2]:
        for label, d in (("wall", secs), ("CPU", cpu)):
            ratios = [o / x for o, x in zip(d[arm], d["direct"])]
            print(f"{what} {label} ratio ({arm} / direct, median of {len(ratios)} pairs): "
                  f"{statistics.median(ratios):.2f}x  (pairs: {' '.join(f'{r:.2f}' for r in ratios)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="pairs in the url list")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each arm (interleaved)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    from cocu_core.stages.download import download_stage
    from cocu_core.toyworld import serve_directory, write_url_list

    work = Path(tempfile.mkdtemp(prefix="cocu_bench_download_"))
    try:
        t0 = time.time()
        split, table = toy_pairs(work / "world", args.n)
        cfg = bench_config(work / "run", args.shard_size)
        print(f"load average {os.getloadavg()[0]:.2f}; {args.n} toy pairs ({cfg.data.image_size} px JPEGs) generated in "
              f"{time.time() - t0:.1f} s; img2dataset: {cfg.data.processes} processes x {cfg.data.threads} threads, "
              f"shards of {args.shard_size}, {args.repeats} repeats per arm, alternating order")
        secs: dict[str, list[float]] = {"ours": [], "direct": []}
        cpu: dict[str, list[float]] = {"ours": [], "direct": []}
        ok: dict[str, set[int]] = {"ours": set(), "direct": set()}
        with serve_directory(split) as srv:
            urls = work / "urls.parquet"
            write_url_list(table, srv.base_url, urls)
            for rep in range(args.repeats):
                for arm in (("ours", "direct") if rep % 2 == 0 else ("direct", "ours")):
                    out = work / f"{arm}_{rep}"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    t, c = time.perf_counter(), cpu_seconds()
                    if arm == "ours":
                        rep_ = download_stage(urls, out, cfg, base_url=srv.base_url, progress=False)
                        ok[arm].add(int(rep_["success"]))
                    else:
                        ok[arm].add(run_direct(direct_spec(cfg, urls, out / "shards"), out))
                    secs[arm].append(time.perf_counter() - t)
                    cpu[arm].append(cpu_seconds() - c)
                    shutil.rmtree(out, ignore_errors=True)
        if ok["ours"] != ok["direct"] or len(ok["ours"]) != 1:
            raise SystemExit(f"the arms downloaded different numbers of images: {ok}")
        n_ok = ok["ours"].pop()
        print(f"  images downloaded by each arm: {n_ok} of {args.n}")
        print_arms(secs, cpu, n_ok, "download overhead")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
