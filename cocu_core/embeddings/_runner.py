"""Run clip-retrieval inference shard by shard in a child process: `python -m cocu_core.embeddings._runner spec.json`.

Why a separate process: clip-retrieval starts spawn-based logger processes that re-import the main
module; this module makes torchvision importable at import time (compat shim) and registers the
open_clip architecture, so those children and the inference itself work for any caller.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from cocu_core.compat import ensure_torchvision

ensure_torchvision()

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


def _finish(parts: Path, tmp: Path, name: str, part_key: str) -> None:
    """Why: a shard's part gets its done marker, then is renamed into place in one step."""
    part = parts / name
    if part.exists():
        shutil.rmtree(part)
    tmp.mkdir(parents=True, exist_ok=True)  # clip-retrieval writes nothing for a shard with no sample
    write_json_atomic(tmp / "done.json", {"part_key": part_key, "shard": name})
    tmp.rename(part)
    print(f"cocu: embedded shard {name}", flush=True)


def main(spec_path: str) -> int:
    """Why: embed each pending shard into a temporary folder, then rename it into place when complete."""
    spec = json.loads(Path(spec_path).read_text())
    die_with_parent(int(spec["_parent_pid"]))
    import open_clip

    for cfg_path in spec.get("model_configs", []):
        open_clip.add_model_config(cfg_path)
    _models_in_eval_mode(open_clip)
    from cocu_core.embeddings.clip_retrieval import embed_shard, embed_shards_grouped  # after the compat shim

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
            _finish(parts, staging / name, name, spec["part_key"])
        shutil.rmtree(staging)
        return 0
    for name, tar in tars.items():
        tmp = parts / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        embed_shard(tar, tmp, spec["clip_model"], spec["batch_size"], spec["num_workers"], options)
        _finish(parts, tmp, name, spec["part_key"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
