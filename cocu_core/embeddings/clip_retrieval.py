"""clip-retrieval's inference, called the way this project needs it: one shard per call, or many shards in one
call (one output partition each) for clip-retrieval's own distributors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from cocu_core.compat import ensure_torchvision


def _clip_inference():
    """Why: clip-retrieval imports torchvision, which needs the compat shim on CPU torch (ENVIRONMENT.md trap 1)."""
    ensure_torchvision()
    from clip_retrieval.clip_inference.main import main as clip_inference

    return clip_inference


def prepro_workers(num_workers: int) -> int:
    """Why: clip-retrieval's webdataset reader splits the tars of a partition between its data-loader workers; a
    partition here is one shard, so a second worker gets no tar, raises "No samples found in dataset" and inference
    then waits forever. One worker decodes while the model runs."""
    return min(num_workers, 1)


def embed_shard(tar: Path, out: Path, clip_model: str, batch_size: int, num_workers: int,
                options: Optional[dict[str, Any]] = None) -> None:
    """Why: run the real clip-retrieval inference on one webdataset shard into `out`."""
    _clip_inference()(
        input_dataset=str(tar),  # a plain string: clip-retrieval brace-expands it (a list would break)
        output_folder=str(out),
        input_format="webdataset",
        enable_text=True,
        enable_image=True,
        enable_metadata=True,
        batch_size=batch_size,
        num_prepro_workers=prepro_workers(num_workers),
        clip_model=clip_model,
        use_jit=False,
        output_partition_count=1,
        enable_wandb=False,
        **(options or {}),
    )


def embed_shards_grouped(tars: Sequence[Path], out: Path, clip_model: str, batch_size: int, num_workers: int,
                         strategy: str = "sequential", options: Optional[dict[str, Any]] = None) -> list[Path]:
    """Why: one clip-retrieval call over many shards, one output partition per shard, so its own distributors
    (pyspark executors, slurm nodes) spread the shards; returns each shard's part folder under `out`."""
    tars = [Path(t) for t in tars]
    if len({t.parent for t in tars}) != 1:
        raise ValueError("grouped embedding needs the shards of one folder")
    names = [t.stem for t in tars]
    pattern = str(tars[0]) if len(tars) == 1 else f"{tars[0].parent}/{{{','.join(names)}}}.tar"
    raw = out / "_clip_retrieval"
    _clip_inference()(
        input_dataset=pattern, output_folder=str(raw), input_format="webdataset", enable_text=True,
        enable_image=True, enable_metadata=True, batch_size=batch_size, num_prepro_workers=prepro_workers(num_workers),
        clip_model=clip_model, use_jit=False, output_partition_count=len(tars), enable_wandb=False,
        distribution_strategy=strategy, **(options or {}),
    )
    width = int(np.log10(len(tars))) + 1  # clip-retrieval's zero padding of partition ids
    parts = []
    for i, name in enumerate(names):  # partition i reads the i-th tar of the pattern (its Sampler: index % count)
        part = out / name
        part.mkdir(parents=True, exist_ok=True)
        for sub, stem, ext in (("img_emb", "img_emb", "npy"), ("text_emb", "text_emb", "npy"),
                               ("metadata", "metadata", "parquet")):
            src = raw / sub / f"{stem}_{str(i).zfill(width)}.{ext}"
            if src.is_file():
                (part / sub).mkdir(exist_ok=True)
                src.rename(part / sub / f"{stem}_0.{ext}")
        parts.append(part)
    return parts
