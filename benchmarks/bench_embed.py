"""Embedding speed: our embed stage against calling clip-retrieval's `clip_inference` directly, side by side on the
same webdataset shards with the same model.

The shards: toy-world pairs served over loopback and downloaded once by our download stage (img2dataset). The model:
the toy `cocu-tiny` architecture (configs/toy.yaml's encoder settings) with random weights saved to a file, or a
trained checkpoint (`--checkpoint runs/toy/encoder/cocu-tiny.pt`); the speed is the same.

* ours:   `cocu_core.stages.embed.embed_stage` (one child process running one persistent loop over every shard: the
          model loaded once, `--workers` decode workers, clip-retrieval's ClipMapper and NumpyWriter into one part per
          shard, renamed when complete; then the parts are checked, L2-normalised, sorted by key and assembled into the
          memory-mapped float32 arrays + metadata.parquet);
* direct: `clip_retrieval.clip_inference.main.main` in a fresh Python process, once over all shards (brace pattern,
          one output partition), same batch size and the same data-loader workers (at most one per tar: its reader
          splits tars between workers and hangs when one gets none); the only additions are the model-config
          registration for `cocu-tiny` and model.eval() (clip-retrieval leaves open_clip models in train mode; ours
          does the same patch), so both arms compute the same embeddings (checked).

With `--grouped`, a third arm, `grouped`: our runner's one-call path (`embed_shards_grouped`, what the stage uses
for clip-retrieval's pyspark/slurm distributors: one clip_inference call, one output partition per shard) followed by
the same assembly, i.e. what the stage would cost if the sequential mode also made one call.

Arms alternate order every repeat; the ratios are the medians over repeats of ours' (or grouped's) wall seconds /
direct's, and the same for CPU seconds (this process and its finished children). Run:
    nice -n 19 .venv/bin/python benchmarks/bench_embed.py [--n 1500] [--shard-size 500] [--repeats 2] [--workers 2]
        [--grouped]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_download import ROOT, bench_config, cpu_seconds, print_arms, toy_pairs  # noqa: E402  (sets the env too)


def run_direct(spec: dict, work: Path) -> None:
    """Why: clip-retrieval as a user calls it: one fresh process, one call over every shard."""
    spec_f = work / "direct_spec.json"
    spec_f.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(work / "direct.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "cocu_core.embeddings.direct", str(spec_f)], stdout=log,
                       stderr=subprocess.STDOUT, check=True,
                       env=env, cwd=work)


def direct_rows(out: Path) -> tuple[list[str], np.ndarray]:
    """Why: clip-retrieval's own output as (keys, float32 image embeddings), sorted by key, to compare with ours."""
    import pyarrow.parquet as pq

    keys = pq.read_table(next(out.glob("metadata/*.parquet"))).column("image_path").to_pylist()
    img = np.load(next(out.glob("img_emb/*.npy"))).astype(np.float32)
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    return [keys[i] for i in order], img[order]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500, help="pairs downloaded and embedded")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each arm (interleaved)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a cocu-tiny checkpoint (default: random weights)")
    ap.add_argument("--workers", type=int, default=2, help="decode (data-loader) workers of each arm")
    ap.add_argument("--grouped", action="store_true", help="add the one-call (grouped) runner as a third arm")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from cocu_core.compat import ensure_torchvision
    from cocu_core.stages.download import download_stage
    from cocu_core.data.shards import shard_name
    from cocu_core.embeddings.store import assemble_parts, l2_normalise
    from cocu_core.stages.embed import embed_stage, part_key_for
    from cocu_core.encoder.load import clip_model_string, encoder_fingerprint, model_config_paths, resolve_weights
    from cocu_core.proc import run_module
    from cocu_core.toyworld import serve_directory, write_url_list

    work = Path(tempfile.mkdtemp(prefix="cocu_bench_embed_"))
    try:
        split, table = toy_pairs(work / "world", args.n)
        cfg = bench_config(work / "run", args.shard_size, encoder={"num_workers": args.workers, "embed_processes": 1})
        w = cfg.workpath
        with serve_directory(split) as srv:
            write_url_list(table, srv.base_url, work / "urls.parquet")
            dl = download_stage(work / "urls.parquet", w / "download", cfg, base_url=srv.base_url, progress=False)
        model_configs = model_config_paths(cfg)  # writes and registers cocu-tiny.json from the toy config
        weights = args.checkpoint
        if weights is None:
            import torch

            ensure_torchvision()
            import open_clip

            torch.manual_seed(0)
            weights = work / "cocu-tiny-random.pt"
            torch.save(open_clip.create_model(cfg.encoder.model).state_dict(), weights)
        cfg = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"pretrained": str(weights.resolve())})})
        arch, ckpt = resolve_weights(cfg)
        clip_model, enc_id = clip_model_string(arch, ckpt), encoder_fingerprint(cfg)
        n_shards = int(dl["n_shards"])
        direct_workers = min(args.workers, n_shards)
        shards = w / "download" / "shards"
        pattern = str(shards / shard_name(0)) + ".tar" if n_shards == 1 else \
            f"{shards}/{{{shard_name(0)}..{shard_name(n_shards - 1)}}}.tar"
        print(f"load average {os.getloadavg()[0]:.2f}; {dl['success']} images in {n_shards} shards of {args.shard_size} "
              f"({cfg.data.image_size} px); model {arch} ({'random weights' if args.checkpoint is None else ckpt}), "
              f"batch {cfg.encoder.inference_batch_size}, decode workers: ours {args.workers}, direct {direct_workers}; "
              f"{args.repeats} repeats per arm, alternating order")
        arms = ("ours", "direct", "grouped") if args.grouped else ("ours", "direct")
        secs: dict[str, list[float]] = {a: [] for a in arms}
        cpu: dict[str, list[float]] = {a: [] for a in arms}
        max_diff = 0.0
        for rep in range(args.repeats):
            outs = {}
            for arm in (arms if rep % 2 == 0 else arms[::-1]):
                out = work / f"{arm}_{rep}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                t, c = time.perf_counter(), cpu_seconds()
                if arm == "ours":
                    rep_ = embed_stage(w / "download", out, cfg, clip_model, enc_id, model_configs, progress=False)
                    assert not rep_["cached"] and rep_["shards_embedded"] == n_shards
                elif arm == "grouped":
                    names = [shard_name(i) for i in range(n_shards)]
                    run_module("cocu_core.embeddings._runner", {
                        "parts_dir": str(out / "parts"), "shards_dir": str(shards), "shards": names,
                        "clip_model": clip_model, "part_key": part_key_for(w / "download", enc_id, cfg),
                        "batch_size": cfg.encoder.inference_batch_size, "num_workers": cfg.encoder.num_workers,
                        "model_configs": [str(p) for p in model_configs], "grouped": True},
                        out / "spec.json", out / "grouped.log")
                    assemble_parts(out / "parts", names, out, clip_model)
                else:
                    run_direct({"input_dataset": pattern, "output_folder": str(out), "input_format": "webdataset",
                                "enable_text": True, "enable_image": True, "enable_metadata": True,
                                "batch_size": cfg.encoder.inference_batch_size,
                                "num_prepro_workers": direct_workers, "clip_model": clip_model,
                                "use_jit": False, "output_partition_count": 1, "enable_wandb": False,
                                "model_configs": [str(p) for p in model_configs]}, out)
                secs[arm].append(time.perf_counter() - t)
                cpu[arm].append(cpu_seconds() - c)
                outs[arm] = out
            keys_d, img_d = direct_rows(outs["direct"])
            keys_o = pq.read_table(outs["ours"] / "metadata.parquet").column("key").to_pylist()
            if keys_o != keys_d:
                raise SystemExit("the arms embedded different samples")
            for arm in outs:
                if arm != "direct":
                    mine = np.load(outs[arm] / "img_emb.npy")
                    if pq.read_table(outs[arm] / "metadata.parquet").column("key").to_pylist() != keys_d:
                        raise SystemExit(f"arm {arm} embedded different samples")
                    max_diff = max(max_diff, float(np.abs(mine - l2_normalise(img_d)).max()))
            for out in outs.values():
                shutil.rmtree(out, ignore_errors=True)
        n_ok = len(keys_o)
        print(f"  same {n_ok} samples in every arm; image embeddings max |ours - direct (renormalised)| = {max_diff:.1e}")
        print_arms(secs, cpu, n_ok, "embed overhead")
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
