"""One persistent embedding loop over many shards: the model loaded once, decode workers over indexed tar members,
clip-retrieval's own mapper (`ClipMapper`) and writer (`NumpyWriter`) into one part per shard.

Why not clip-retrieval's `main` per shard: every call spawns two logger processes (each importing the whole
package) and restarts its reader; and its webdataset reader splits *tars* between data-loader workers, so with one
tar per call a second worker gets none, raises "No samples found" and inference waits forever (the hang the old
one-worker cap avoided). Here the tars are indexed once (member offsets), every sample is one item of a map-style
dataset, and batches are fixed index ranges within a shard: the DataLoader returns them in order whatever the
worker count, so the batches (and so the bytes) are the same with 0, 1 or 8 workers and equal clip-retrieval's own
sequential batches of one shard. Decoding copies clip-retrieval's webdataset reader item by item (`_decode`).
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from cocu_core.compat import ensure_torchvision
from cocu_core.io import write_json_atomic
from cocu_core.proc import die_with_parent

KEYS = ("jpg", "txt", "json")  # clip-retrieval's wds_image_key, wds_caption_key, and the metadata it reads
_META_PREFIX = "__"  # webdataset skips members such as __index__


@dataclass(frozen=True)
class Sample:
    """Where one sample's members lie in its tar (offset, size per extension)."""

    shard: int
    key: str
    members: tuple[tuple[str, int, int], ...]


def _base_plus_ext(name: str) -> tuple[Optional[str], Optional[str]]:
    """Why: webdataset's split of a member name into sample key and extension (everything after the first dot)."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        return None, None
    head, _, ext = base.partition(".")
    return name[: len(name) - len(base)] + head, ext


def index_tar(tar: Path, shard: int) -> list[Sample]:
    """Why: the samples of one tar in stored order, grouped as webdataset groups them (consecutive members of one
    key, lower-case extensions), keeping those clip-retrieval keeps (jpg, txt and json all present)."""
    out: list[Sample] = []
    key: Optional[str] = None
    members: dict[str, tuple[int, int]] = {}

    def close() -> None:
        if key is not None and all(k in members for k in KEYS):
            out.append(Sample(shard, key, tuple((k, *members[k]) for k in KEYS)))

    with tarfile.open(tar) as tf:
        for m in tf:
            if not m.isfile() or m.name.rsplit("/", 1)[-1].startswith(_META_PREFIX):
                continue
            k, ext = _base_plus_ext(m.name)
            if k is None:
                continue
            if k != key:
                close()
                key, members = k, {}
            members[ext.lower()] = (m.offset_data, m.size)
    close()
    return out


class ShardSamples:
    """A map-style dataset over the indexed samples of many tars; each item is decoded as clip-retrieval's
    webdataset reader decodes it, or None when that reader would skip it (warn_and_continue)."""

    def __init__(self, tars: Sequence[Path], samples: Sequence[Sample], preprocess: Callable, tokenizer: Callable):
        self.tars = [str(t) for t in tars]
        self.samples = list(samples)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        f = self._files.get(shard)
        if f is None:  # opened lazily, per process: a forked worker never shares a parent's file offset
            f = self._files[shard] = open(self.tars[shard], "rb")
        f.seek(offset)
        return f.read(size)

    def __getitem__(self, i: int) -> Optional[dict[str, Any]]:
        s = self.samples[i]
        raw = {ext: self._read(s.shard, off, size) for ext, off, size in s.members}
        try:
            return _decode(raw, s.key, self.preprocess, self.tokenizer)
        except Exception as exc:  # noqa: BLE001  (clip-retrieval's handler: warn and skip the sample)
            print(f"cocu: skipping sample {s.key} of {self.tars[s.shard]}: {type(exc).__name__}: {exc}", flush=True)
            return None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}


def _decode(raw: dict[str, bytes], key: str, preprocess: Callable, tokenizer: Callable) -> dict[str, Any]:
    """Why: clip-retrieval's `create_webdataset.preprocess_dataset` with image, text and metadata enabled."""
    from PIL import Image

    caption = raw["txt"].decode("utf-8")
    return {"image_filename": key, "image_tensor": preprocess(Image.open(io.BytesIO(raw["jpg"]))),
            "text_tokens": tokenizer([caption])[0], "text": caption, "metadata": raw["json"].decode("utf-8")}


def collate(items: list[Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
    """Why: skipped samples drop out of their batch (a batch with none left is None); the batch says which decode
    worker made it (-1: the embedding process itself), so a run can show that its workers were used."""
    from torch.utils.data import get_worker_info
    from torch.utils.data.dataloader import default_collate

    kept = [x for x in items if x is not None]
    if not kept:
        return None
    info = get_worker_info()
    return {**default_collate(kept), "decode_worker": -1 if info is None else info.id}


def shard_batches(samples: Sequence[Sample], n_shards: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """Why: fixed index batches that never cross a shard: (shard, indices), in order; the batches do not depend on
    the worker count, so neither do the embeddings."""
    out: list[tuple[int, list[int]]] = []
    start = 0
    for shard in range(n_shards):
        end = start
        while end < len(samples) and samples[end].shard == shard:
            end += 1
        out.extend((shard, list(range(a, min(a + batch_size, end)))) for a in range(start, end, batch_size))
        start = end
    return out


def _worker_init(parent_pid: int) -> Callable[[int], None]:
    def init(_: int) -> None:
        die_with_parent(parent_pid)  # a forked worker does not inherit the death signal: a killed runner takes it too

    return init


def _batches(loader: Any, plan: list[tuple[int, list[int]]]) -> Iterator[tuple[int, Optional[dict[str, Any]]]]:
    for (shard, _), batch in zip(plan, loader):
        yield shard, batch


def finish_part(parts: Path, tmp: Path, name: str, part_key: str) -> None:
    """Why: a shard's part gets its done marker, then is renamed into place in one step."""
    part = parts / name
    if part.exists():
        shutil.rmtree(part)
    tmp.mkdir(parents=True, exist_ok=True)  # a shard with no sample leaves an empty part, as clip-retrieval does
    write_json_atomic(tmp / "done.json", {"part_key": part_key, "shard": name})
    tmp.rename(part)
    print(f"cocu: embedded shard {name}", flush=True)


def embed_loop(tars: Sequence[Path], parts: Path, clip_model: str, part_key: str, batch_size: int,
               num_workers: int, log_every_s: float = 10.0) -> dict[str, Any]:
    """Why: embed every tar into `parts/<tar stem>/` (clip-retrieval's part layout + done.json), the model loaded
    once and the decode workers started once for all of them. Returns counts and seconds."""
    ensure_torchvision()
    import torch
    from all_clip import load_clip
    from clip_retrieval.clip_inference.mapper import ClipMapper
    from clip_retrieval.clip_inference.writer import NumpyWriter

    t0 = time.time()
    tars = [Path(t) for t in tars]
    names = [t.stem for t in tars]
    samples = [s for i, t in enumerate(tars) for s in index_tar(t, i)]
    # the same load_clip call as clip-retrieval's reader and mapper make: lru-cached, so the model loads once
    _, preprocess, tokenizer = load_clip(clip_model=clip_model, use_jit=False, warmup_batch_size=batch_size,
                                         clip_cache_path=None)
    mapper = ClipMapper(enable_image=True, enable_text=True, enable_metadata=True, use_mclip=False,
                        clip_model=clip_model, use_jit=False, mclip_model=None, warmup_batch_size=batch_size)
    plan = shard_batches(samples, len(tars), batch_size)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = {"multiprocessing_context": "fork", "prefetch_factor": 2, "worker_init_fn": _worker_init(os.getpid())}
    loader = torch.utils.data.DataLoader(ShardSamples(tars, samples, preprocess, tokenizer),
                                         batch_sampler=[b for _, b in plan], num_workers=num_workers,
                                         collate_fn=collate, pin_memory=torch.cuda.is_available(), **kw)
    t_load = time.time() - t0
    parts.mkdir(parents=True, exist_ok=True)
    current, writer, rows, last_log, workers_seen = 0, None, 0, time.time(), set()

    def staging(i: int) -> Path:
        tmp = parts / f".{names[i]}.tmp"
        if tmp.exists():  # a killed run's leftovers
            shutil.rmtree(tmp)
        return tmp

    tmp = staging(0) if tars else parts

    def advance() -> None:
        nonlocal current, writer, tmp
        if writer is not None:
            writer.flush()
        finish_part(parts, tmp, names[current], part_key)
        current, writer = current + 1, None
        if current < len(tars):
            tmp = staging(current)

    for shard, batch in _batches(loader, plan):
        while current < shard:
            advance()
        if batch is None:
            continue
        if writer is None:
            writer = NumpyWriter(partition_id=0, output_folder=str(tmp), enable_text=True, enable_image=True,
                                 enable_metadata=True, output_partition_count=1)
        workers_seen.add(int(batch.pop("decode_worker")))
        writer(mapper(batch))
        rows += len(batch["image_filename"])
        if time.time() - last_log > log_every_s:
            print(f"cocu: {rows} samples embedded, {current}/{len(tars)} shards done", flush=True)
            last_log = time.time()
    while current < len(tars):
        advance()
    return {"shards": len(tars), "rows": rows, "decode_workers_used": len(workers_seen - {-1}),
            "load_seconds": round(t_load, 2),
            "seconds": round(time.time() - t0, 2)}


def split_shards(shards: Sequence[str], n: int) -> list[list[str]]:
    """Why: disjoint, balanced shard lists for `n` embedding processes (round robin keeps each list sorted)."""
    return [list(shards[i::n]) for i in range(n) if shards[i::n]]
