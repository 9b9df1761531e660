"""Run the embedding of pending shards in a child process tree: `python -m cocu_core.embeddings._runner spec.json`.

Why a separate process: the data-loader workers (and, for pyspark/slurm, clip-retrieval's own spawned processes)
must die with the stage; this module makes torchvision importable at import time (compat shim) and registers the
open_clip architecture. `sequential`: one persistent loop over every pending shard (`loop.embed_loop`); with
`processes` > 1, that many loops over disjoint shard lists, one per GPU (CUDA_VISIBLE_DEVICES) or CPU share.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cocu_core.compat import ensure_torchvision

ensure_torchvision()

from cocu_core.embeddings.loop import embed_loop, finish_part, split_shards  # noqa: E402
from cocu_core.io import write_json_atomic  # noqa: E402
from cocu_core.proc import die_with_parent  # noqa: E402


def _models_in_eval_mode(open_clip) -> None:
    """Why: clip-retrieval's loader (all_clip) never calls `.eval()`, so CLIP ResNets would embed with
    BatchNorm batch statistics (batch-dependent vectors); every model it creates here is put in eval mode."""
    create = open_clip.create_model_and_transforms
    if getattr(create, "_cocu_eval_mode", False):
        return

    def create_in_eval_mode(*args, **kwargs):
        model, preprocess_train, preprocess_val = create(*args, **kwargs)
        return model.eval(), preprocess_train, preprocess_val

    create_in_eval_mode._cocu_eval_mode = True  # type: ignore[attr-defined]
    open_clip.create_model_and_transforms = create_in_eval_mode


def gpu_count() -> int:
    """Why: the GPUs this process may use (0 on a CPU machine)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_processes(requested: int, gpus: int) -> int:
    """Why: 0 = one embedding process per visible GPU (one on a CPU machine); a number is taken as given."""
    return requested if requested > 0 else max(1, gpus)


def run_fan_out(spec: dict, spec_path: Path, n: int, gpus: int) -> int:
    """Why: `n` embedding loops over disjoint pending shards, each its own process (one GPU each when there are
    GPUs; otherwise the CPU threads are shared out); they die with this runner (the deathsig sitecustomize)."""
    groups = split_shards(spec["shards"], n)
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1) // len(groups))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d] or [str(g) for g in range(gpus)]
    procs = []
    for i, shards in enumerate(groups):
        sub = spec_path.with_name(f"{spec_path.stem}.{i}.json")
        write_json_atomic(sub, {**spec, "shards": shards, "processes": 1, "_parent_pid": os.getpid(),
                                "stats_path": str(sub.with_suffix(".stats.json"))})
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": visible[i % gpus]} if gpus else {}),
               **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
        procs.append(subprocess.Popen([sys.executable, "-m", "cocu_core.embeddings._runner", str(sub)], env=env))
    codes = [p.wait() for p in procs]
    bad = [(i, c) for i, c in enumerate(codes) if c]
    if bad:
        print(f"cocu: embedding processes failed (index, exit code): {bad}", flush=True)
        return 1
    if spec.get("stats_path"):
        each = [json.loads(spec_path.with_name(f"{spec_path.stem}.{i}.stats.json").read_text()) for i in range(len(groups))]
        write_json_atomic(spec["stats_path"], {"processes": len(groups), "rows": sum(e["rows"] for e in each),
                                               "shards": sum(e["shards"] for e in each),
                                               "decode_workers_used": sum(e["decode_workers_used"] for e in each)})
    return 0


def main(spec_path: str) -> int:
    """Why: embed the pending shards (each into a temporary folder, renamed into place when complete)."""
    spec = json.loads(Path(spec_path).read_text())
    die_with_parent(int(spec["_parent_pid"]))
    import open_clip

    for cfg_path in spec.get("model_configs", []):
        open_clip.add_model_config(cfg_path)
    _models_in_eval_mode(open_clip)
    from cocu_core.embeddings.clip_retrieval import embed_shards_grouped  # after the compat shim

    parts = Path(spec["parts_dir"])
    strategy = spec.get("distribution_strategy", "sequential")
    options = dict(spec.get("inference_options") or {})
    tars = {name: Path(spec["shards_dir"]) / f"{name}.tar" for name in spec["shards"]}
    if strategy != "sequential" or spec.get("grouped"):  # one call over every pending shard (its distributor spreads them)
        staging = parts / ".grouped.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        embed_shards_grouped(list(tars.values()), staging, spec["clip_model"], spec["batch_size"],
                             spec["num_workers"], strategy, options)
        for name in spec["shards"]:
            finish_part(parts, staging / name, name, spec["part_key"])
        shutil.rmtree(staging)
        return 0
    n = resolve_processes(int(spec.get("processes", 1)), gpu_count()) if len(tars) > 1 else 1
    if n > 1:
        return run_fan_out(spec, Path(spec_path), n, gpu_count())
    stats = embed_loop(list(tars.values()), parts, spec["clip_model"], spec["part_key"], spec["batch_size"],
                       int(spec["num_workers"]))
    print(f"cocu: embed loop {json.dumps(stats)}", flush=True)
    if spec.get("stats_path"):
        write_json_atomic(spec["stats_path"], stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
