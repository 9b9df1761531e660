"""`python -m cocu_core.embeddings.direct SPEC.json`: clip-retrieval's `clip_inference` called as a user calls it.

Why: the reference our embedding loop is checked against (tests/test_embed_loop.py: identical bytes) and timed
against (benchmarks/bench_embed.py): one fresh process, one call with the spec's arguments, the project's open_clip
model configs registered and the models in eval mode, as the pipeline loads them. The work runs under the
`__main__` guard, since clip-retrieval's workers start by spawning (ENVIRONMENT.md).
"""

from __future__ import annotations

import json
import sys

from cocu_core.compat import ensure_torchvision
from cocu_core.embeddings._runner import _models_in_eval_mode


def main(spec_path: str) -> int:
    """Why: clip_inference with the spec's keyword arguments (less `model_configs`, registered first)."""
    spec = json.load(open(spec_path))
    ensure_torchvision()
    import open_clip

    for p in spec.pop("model_configs"):
        open_clip.add_model_config(p)
    _models_in_eval_mode(open_clip)
    from clip_retrieval.clip_inference.main import main as clip_inference

    clip_inference(**spec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
