"""The training input pipeline (shards -> augmented images + token ids), alone and feeding the real step.

Builds webdataset shards and a ``cocu`` concept archive in a temporary folder from toy-world renders: for
``groupvit-s`` (224 px, the protocol's DeiT augmentation, CLIP's 80 templates) the JPEGs are 500x375, a web
image's size, so decoding costs what it costs on CC3M; for the toy recipe (``configs/toy.yaml``: 64 px,
crop_flip at scale 0.5-1) they are the toy world's 64-px renders. Then, per recipe:

(a) the pipeline alone (``TrainData.batches``: exactly what the step consumes) in images/s, in the training
    process (0 workers: one core) and with 1..N loader workers, with images/s per worker;
(b) the training step (forward, loss, backward, AdamW) fed by the pipeline against the same step fed from
    memory (the same batches collected beforehand), same model, batch, device and threads, in alternating
    blocks (an epoch each) so contention hits both alike; ratio printed;
(c) a per-sample profile of the pipeline: read, decode, augment, prompt sampling, tokenize (the cached
    tokens against open_clip's tokenizer on the same strings, the old in-step cost), collate.

Run:
    .venv/bin/python benchmarks/bench_train_input.py [--recipe toy groupvit-s] [--samples N] [--workers 0 1 2]
        [--rounds 3] [--threads T] [--device cpu|cuda] [--step-recipes toy] [--precision fp32|bf16] [--batch B]
On CUDA the batches are pinned and copied non-blocking, memory-fed ones too (they are held in host memory).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cocu_core.config import CurationConfig, TrainConfig  # noqa: E402
from cocu_core.curation import ARCHIVE_SCHEMA, archive_metadata, write_archive  # noqa: E402
from cocu_core.train.data import TrainData, _Collate, decode_image  # noqa: E402

RECIPES = {  # model, image size, rendered JPEG (w, h), TrainConfig fields of the recipe
    "groupvit-s": ("groupvit-s", 224, (500, 375), {"augment": "deit", "templates": "full80", "batch_size": 64}),
    "toy": ("groupvit-toy", 64, (64, 64), {"augment": "crop_flip", "crop_scale": (0.5, 1.0), "templates": "full80",
                                          "batch_size": 128}),
}
BATCH = 0  # --batch: overrides the recipe's batch size
_WORDS = ["a", "the", "small", "red", "old", "park", "near", "with", "on", "street", "sunny", "day", "two", "big",
          "standing", "beside", "colourful", "wooden", "during", "winter", "people", "walking", "along"]
VOCAB = ["dog", "cat", "car", "tree", "boat", "house", "bird", "horse", "bicycle", "person", "chair", "table", "sky",
         "grass", "water", "sand", "snow", "road", "forest", "wall", "bridge", "mountain", "beach", "flower", "t-shirt",
         "ice cream", "traffic light", "3d printer", "golden retriever", "city skyline"]


def make_world(root: Path, n: int, size: tuple[int, int], per_shard: int = 256, seed: int = 0) -> tuple[Path, Path, int]:
    """Why: realistic shards (toy-world renders as JPEGs of the recipe's web size) and a cocu archive over them."""
    from cocu_core.toyworld.concepts import THINGS
    from cocu_core.toyworld.render import render_scene

    rng = np.random.default_rng(seed)
    w, h = size
    side = max(w, h) + 60
    scenes = [render_scene(rng, side, 3, 0.3, tuple(t.name for t in THINGS)).image for _ in range(max(4, n // 24))]
    shards, arch = root / "shards", root / "cocu"
    shards.mkdir(parents=True)
    arch.mkdir()
    rows, nbytes = [], 0
    for s in range(0, n, per_shard):
        with tarfile.open(shards / f"{s // per_shard:05d}.tar", "w") as tf:
            for i in range(s, min(n, s + per_shard)):
                key = f"{i // 10000:05d}{i % 10000:04d}"
                img = scenes[i % len(scenes)]
                x, y = rng.integers(0, side - w + 1), rng.integers(0, side - h + 1)
                buf = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(img[y:y + h, x:x + w])).save(buf, "JPEG", quality=90)
                words = [_WORDS[j] for j in rng.integers(len(_WORDS), size=rng.integers(8, 21))]
                words[len(words) // 2] = VOCAB[i % len(VOCAB)]
                caption = " ".join(words)
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                nbytes += len(buf.getvalue())
                ids = rng.choice(len(VOCAB), 6, replace=False).astype(np.int32)
                scores = np.sort(rng.random(6).astype(np.float32))[::-1]
                rows.append({"key": key, "caption": caption, "caption_concept_ids": ids[:1].tolist(),
                             "concept_ids": ids.tolist(), "concepts": [VOCAB[c] for c in ids],
                             "naive_scores": scores.tolist(), "t2v_scores": scores.tolist(),
                             "cluster_ids": [j % 3 for j in range(6)], "neighbour_keys": []})
    for s in range(0, len(rows), 1000):
        write_archive(arch / f"{s // 1000:05d}.parquet", pa.Table.from_pylist(rows[s:s + 1000], schema=ARCHIVE_SCHEMA),
                      archive_metadata(CurationConfig(variant="cocu"), "bench"))
    return shards, arch, nbytes // n


def open_data(recipe: str, shards: Path, arch: Path, workers: int, **over) -> TrainData:
    """Why: the recipe's TrainData as the training loop opens it (token ids at the model's context length)."""
    from cocu_core.model import get_config

    model, size, _, fields = RECIPES[recipe]
    pin = bool(over.pop("pin_memory", False))
    cfg = TrainConfig(**{**fields, "num_workers": workers, **({"batch_size": BATCH} if BATCH else {}), **over})
    return TrainData(shards, arch, "cocu", size, cfg, context_length=get_config(model).context_length, pin_memory=pin)


def _cpu_seconds(pids: list[int]) -> float:
    """Why: CPU seconds (user + system) the loader workers used, from /proc (the contention-proof clock)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pipeline_rate(data: TrainData, epochs: int = 1) -> tuple[float, float]:
    """Why: images/s out of the loader over whole epochs (the first, which starts the workers, not counted),
    by the wall clock and per CPU second of the training process and its workers together."""
    for _ in data.batches(0):
        pass
    it = getattr(data._loader, "_iterator", None)
    pids = [w.pid for w in getattr(it, "_workers", [])]
    n, t, c, cw = 0, time.perf_counter(), time.process_time(), _cpu_seconds(pids)
    for e in range(1, 1 + epochs):
        for b in data.batches(e):
            n += len(b)
    wall, cpu = time.perf_counter() - t, time.process_time() - c + _cpu_seconds(pids) - cw
    return n / wall, n / max(cpu, 1e-9)


def bench_pipeline(recipe: str, shards: Path, arch: Path, workers: list[int]) -> None:
    """Why: (a) the input pipeline alone per worker count."""
    print(f"\n(a) {recipe}: input pipeline alone (decode + augment + prompts + tokens + collate)")
    print(f"{'workers':>8} {'images/s':>10} {'per worker':>11} {'per CPU-second':>15}  (main + workers, user + sys)")
    for w in workers:
        data = open_data(recipe, shards, arch, w)
        threads = torch.get_num_threads()
        if w == 0:
            torch.set_num_threads(1)  # in-process decoding runs on one thread, as a worker does
        try:
            rate, per_cpu = pipeline_rate(data)
        finally:
            torch.set_num_threads(threads)
            data.close()
        print(f"{w:>8} {rate:>10.1f} {rate / max(w, 1):>11.1f} {per_cpu:>15.1f}")


def make_step(model_name: str, device: torch.device, precision: str):
    """Why: the loop's step (forward, CoCu loss, backward, clipping, AdamW) on one model."""
    from cocu_core.model import create_model
    from cocu_core.train.loop import autocast_for
    from cocu_core.train.losses import total_loss
    from cocu_core.train.optim import build_optimizer

    torch.manual_seed(0)
    model = create_model(model_name).to(device).train()
    tc = TrainConfig(model=model_name, precision=precision)
    opt = build_optimizer(model, tc, 64)

    def step(images: torch.Tensor, tokens: torch.Tensor) -> float:
        images, tokens = images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
        with autocast_for(device, precision):
            loss, _ = total_loss(model(images, tokens), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()

    return step


def bench_step(recipe: str, shards: Path, arch: Path, workers: list[int], rounds: int, device: torch.device,
               precision: str) -> None:
    """Why: (b) the step fed by the pipeline against the same step fed from memory, alternating epoch blocks."""
    model_name = RECIPES[recipe][0]
    step = make_step(model_name, device, precision)
    print(f"\n(b) {recipe}: training step ({model_name}, {device}, {precision}, {torch.get_num_threads()} threads) "
          "fed by the pipeline vs from memory")
    print(f"{'workers':>8} {'memory img/s':>13} {'pipeline img/s':>15} {'ratio':>7}   (median of {rounds} rounds)")
    for w in workers:
        data = open_data(recipe, shards, arch, w, pin_memory=device.type == "cuda")
        try:
            held = list(data.batches(0))  # memory-fed: the same kind of batches, already made
            for b in held[:2]:
                step(b.images, b.tokens)  # warm-up
            mem, pipe = [], []
            for r in range(rounds):
                n, t = 0, time.perf_counter()
                for b in held:
                    step(b.images, b.tokens)
                    n += len(b)
                mem.append(n / (time.perf_counter() - t))
                n, t = 0, time.perf_counter()
                for b in data.batches(r + 1):  # a whole epoch: the workers start it empty-handed, as training does
                    step(b.images, b.tokens)
                    n += len(b)
                pipe.append(n / (time.perf_counter() - t))
        finally:
            data.close()
        m, p = statistics.median(mem), statistics.median(pipe)
        ratios = [b / a for a, b in zip(mem, pipe)]
        print(f"{w:>8} {m:>13.1f} {p:>15.1f} {statistics.median(ratios):>7.3f}   "
              f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})")


def bench_profile(recipe: str, shards: Path, arch: Path, n: int) -> None:
    """Why: (c) where one sample's time goes, stage by stage, in the training process (one core)."""
    from cocu_core.model.text import tokenize

    data = open_data(recipe, shards, arch, 0)
    d = data._samples
    ix = d.index
    ctx = d.tokens.context_length
    parts = {k: 0.0 for k in ("read", "decode", "augment", "prompt sampling", "tokenize (cached)", "collate")}
    old_tok = 0.0
    items, clock = [], time.thread_time  # this thread's CPU time: what a worker core pays, whatever the load
    rows = np.arange(min(n, len(ix)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    for i in rows[: min(20, len(rows))]:  # warm-up: lazy imports, the tokenizer's caches (a worker's steady state)
        caption = d.caption(int(i), d.entry(int(i)))
        names, which = d.prompts.draw(caption, d.entry(int(i)), d.sample_seeds(0, int(i))[1])
        d.token_rows(caption, names, which)
        d._augment(decode_image(d._read(int(ix.shard[i]), int(ix.img_off[i]), int(ix.img_len[i])), *d.need), 0)
    for i in rows:
        t0 = clock()
        entry = d.entry(i)
        caption = d.caption(i, entry)
        raw = d._read(int(ix.shard[i]), int(ix.img_off[i]), int(ix.img_len[i]))
        t1 = clock()
        img = decode_image(raw, *d.need)
        t2 = clock()
        aug_seed, rng = d.sample_seeds(0, int(i))
        image = d._augment(img, aug_seed)
        t3 = clock()
        names, which = d.prompts.draw(caption, entry, rng)
        texts = d.prompts.texts(caption, names, which)
        t4 = clock()
        toks = d.token_rows(caption, names, which)
        t5 = clock()
        tokenize(texts, ctx)
        t6 = clock()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[k] += v
        old_tok += t6 - t5
        items.append({"image": image, "texts": texts, "key": str(ix.keys[i]), "step": 0, "tokens": toks})
    collate = _Collate(RECIPES[recipe][1], (d.prompts.k + 1, ctx))
    b = min(data.global_batch, len(items))
    t = clock()
    for s in range(0, len(items) - b + 1, b):
        collate(items[s:s + b])
    parts["collate"] = (clock() - t) / (len(items) // b * b) * len(items)
    torch.set_num_threads(threads)
    data.close()
    total = sum(parts.values())
    print(f"\n(c) {recipe}: per-sample profile over {len(rows)} samples, one thread's CPU time (1 torch thread)")
    for k, v in parts.items():
        print(f"  {k:<20} {v / len(rows) * 1e6:>9.1f} us  {100 * v / total:>5.1f} %")
    print(f"  {'total':<20} {total / len(rows) * 1e6:>9.1f} us  = {len(rows) / total:.1f} images/s per core")
    print("  (tokenize (cached): the caption tokenized once (it pads missing prompts too) + K (template, concept) rows "
          "from the piece table; prompts warm, as in a worker after its first batches)")
    print(f"  (open_clip tokenizer on the same {d.prompts.k + 1} strings, the old in-step path: "
          f"{old_tok / len(rows) * 1e6:.1f} us/sample, {old_tok / max(parts['tokenize (cached)'], 1e-12):.1f}x the cache)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", nargs="+", default=["toy", "groupvit-s"], choices=list(RECIPES))
    ap.add_argument("--samples", type=int, default=0, help="samples per recipe (default: 1280 toy, 320 groupvit-s)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--step-workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--step-recipes", nargs="*", default=["toy"], help="recipes to run (b) for")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the training process; 0 = all cores")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--profile-samples", type=int, default=200)
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the recipe's, 128 toy, 64 groupvit-s)")
    args = ap.parse_args()
    global BATCH
    BATCH = args.batch
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    print(f"bench_train_input: {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads in the training process")
    for recipe in args.recipe:
        n = args.samples or (1280 if recipe == "toy" else 320)
        with tempfile.TemporaryDirectory(prefix="bench_train_input_") as tmp:
            shards, arch, mean_bytes = make_world(Path(tmp), n, RECIPES[recipe][2])
            w, h = RECIPES[recipe][2]
            print(f"\n=== {recipe}: {n} samples, {w}x{h} JPEGs of {mean_bytes / 1024:.1f} KiB on average, "
                  f"{RECIPES[recipe][1]} px, augment {RECIPES[recipe][3]['augment']}")
            bench_profile(recipe, shards, arch, args.profile_samples)
            bench_pipeline(recipe, shards, arch, args.workers)
            if recipe in args.step_recipes:
                bench_step(recipe, shards, arch, args.step_workers, args.rounds, torch.device(args.device),
                           args.precision)


if __name__ == "__main__":
    main()
