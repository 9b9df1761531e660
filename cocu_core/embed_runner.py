"""Run clip-retrieval inference shard by shard in a child process: `python -m cocu_core.embed_runner spec.json`.

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


def main(spec_path: str) -> int:
    """Why: embed each pending shard into a temporary folder, then rename it into place when complete."""
    spec = json.loads(Path(spec_path).read_text())
    die_with_parent(int(spec["_parent_pid"]))
    import open_clip

    for cfg_path in spec.get("model_configs", []):
        open_clip.add_model_config(cfg_path)
    _models_in_eval_mode(open_clip)
    from cocu_core.embed import embed_shard

    parts = Path(spec["parts_dir"])
    for name in spec["shards"]:
        tmp, part = parts / f".{name}.tmp", parts / name
        for stale in (tmp, part):
            if stale.exists():
                shutil.rmtree(stale)
        embed_shard(Path(spec["shards_dir"]) / f"{name}.tar", tmp, spec["clip_model"], spec["batch_size"], spec["num_workers"])
        tmp.mkdir(parents=True, exist_ok=True)  # clip-retrieval writes nothing for a shard with no sample
        write_json_atomic(tmp / "done.json", {"part_key": spec["part_key"], "shard": name})
        tmp.rename(part)
        print(f"cocu: embedded shard {name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
