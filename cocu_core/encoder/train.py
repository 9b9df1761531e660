"""Train the toy world's curation CLIP (`cocu-tiny`) with the symmetric InfoNCE loss, cached on disk.

Layout of ``out_dir``: ``cocu-tiny.json`` (open_clip model config), ``cocu-tiny.pt`` (open_clip
checkpoint, ``{"state_dict": ...}``), ``report.json`` (held-out retrieval), ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from cocu_core.compat import ensure_torchvision
from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.encoder.report import retrieval_recall
from cocu_core.encoder.toy_model import TOY_MODEL, register_toy_model
from cocu_core.io import atomic_path, read_json, stage_is_current, write_json_atomic, write_manifest

ENCODER_FIELDS = [
    "seed",
    "data.image_size",
    "encoder.model",
    "encoder.epochs",
    "encoder.batch_size",
    "encoder.lr",
    "encoder.weight_decay",
    "encoder.embed_dim",
    "encoder.holdout",
    "encoder.toy_vision",
    "encoder.toy_resnet_width",
    "encoder.toy_resnet_layers",
    "encoder.toy_patch_size",
    "encoder.toy_vision_width",
    "encoder.toy_vision_layers",
    "encoder.toy_text_width",
    "encoder.toy_text_layers",
    "encoder.toy_context_length",
]
CHECKPOINT = f"{TOY_MODEL}.pt"
TRAINER_VERSION = 4  # bump when the training procedure changes results, so cached encoders retrain


def web_fingerprint(web_dir: str | Path) -> str:
    """Why: the encoder's data key covers the pairs table and every image's bytes, not file dates."""
    web = Path(web_dir)
    pairs_path = web / "pairs.parquet"
    if not pairs_path.is_file():
        raise FileNotFoundError(f"no pairs table at {pairs_path}; generate the toy world first (`cocu toyworld`)")
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    table = pq.read_table(pairs_path, columns=["file", "caption"])
    for f, c in zip(table.column("file").to_pylist(), table.column("caption").to_pylist()):
        h.update(f.encode() + b"\0" + (c or "").encode() + b"\0")
        h.update(hashlib.sha256((web / f).read_bytes()).digest())
    return h.hexdigest()[:16]


def holdout_split(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Why: a seeded permutation keeps the held-out pairs fixed across runs and out of training."""
    if n <= holdout + 1:
        raise ValueError(f"the web split has {n} pairs; need more than encoder.holdout={holdout} to train")
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def load_web_pairs(web_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Why: the encoder reads the toy world's `web` split straight from disk (images + pairs.parquet)."""
    import pyarrow.parquet as pq

    web = Path(web_dir)
    table = pq.read_table(web / "pairs.parquet", columns=["file", "caption"])
    return [web / f for f in table.column("file").to_pylist()], [c or "" for c in table.column("caption").to_pylist()]


def _images_tensor(paths: list[Path], preprocess: Callable, progress: bool):
    import torch
    from PIL import Image
    from tqdm import tqdm

    out = None
    for i, p in enumerate(tqdm(paths, desc="encoder: load web images", unit="img", disable=not progress, leave=False)):
        with Image.open(io.BytesIO(p.read_bytes())) as im:
            x = preprocess(im.convert("RGB"))
        if out is None:
            out = torch.empty((len(paths), *x.shape), dtype=torch.float16)
        out[i] = x.to(torch.float16)
    return out


def embed_images(model, preprocess: Callable, paths: list[Path], batch_size: int = 256) -> np.ndarray:
    """Why: held-out evaluation goes through open_clip's own preprocess, as inference will."""
    import torch

    x = _images_tensor(paths, preprocess, progress=False)
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            f = model.encode_image(x[i:i + batch_size].float())
            outs.append(torch.nn.functional.normalize(f, dim=-1).numpy())
    return np.concatenate(outs).astype(np.float32)


def recalibrate_batchnorm(model, images, batch_size: int, max_images: int = 4096) -> int:
    """Why: BatchNorm running statistics lag the weights after a short schedule (eval-mode embeddings then
    collapse); re-estimate them with the final weights so eval mode sees what training saw. Returns #layers."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    with torch.no_grad():
        for i in range(0, min(len(images), max_images), batch_size):
            model.encode_image(images[i:i + batch_size].float())
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


def data_key(web_dir: str | Path) -> str:
    """Why: the toy encoder's inputs key (its web split and the trainer's version), shared with `cocu status`."""
    return fingerprint({"web": web_fingerprint(web_dir), "trainer": TRAINER_VERSION})


def train_toy_encoder(
    cfg: PipelineConfig,
    web_dir: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Why: train once per (web data, encoder config); a rerun with both unchanged returns the manifest."""
    out = Path(out_dir)
    fields = cfg.fields_for(ENCODER_FIELDS)
    data_fp = data_key(web_dir)
    if stage_is_current(out, data_fp, fields) and (out / CHECKPOINT).is_file():
        m = read_json(out / "manifest.json")
        m["cached"] = True
        return m

    ensure_torchvision()
    import open_clip
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    enc = cfg.encoder
    t_start = time.time()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(enc.train_threads)
    try:
        out.mkdir(parents=True, exist_ok=True)
        register_toy_model(enc, cfg.data.image_size, out)
        torch.manual_seed(cfg.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(TOY_MODEL, pretrained=None)
        tokenizer = open_clip.get_tokenizer(TOY_MODEL)
        paths, captions = load_web_pairs(web_dir)
        tr_idx, ho_idx = holdout_split(len(paths), enc.holdout, cfg.seed)
        x_all = _images_tensor([paths[i] for i in tr_idx], preprocess, progress)
        tok_all = tokenizer([captions[i] for i in tr_idx])
        n = len(tr_idx)
        bs = min(enc.batch_size, n)
        steps_per_epoch = n // bs
        total = steps_per_epoch * enc.epochs
        warmup = max(1, total // 20)
        # The 49k-row token table is ~90% of the weights but a batch touches a few hundred rows: sparse
        # gradients with a lazy Adam keep the step cost proportional to the words actually seen.
        model.token_embedding.sparse = True
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p is model.token_embedding.weight:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
        opts = [
            torch.optim.AdamW(
                [{"params": decay, "weight_decay": enc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=enc.lr, betas=(0.9, 0.98), eps=1e-6,
            ),
            torch.optim.SparseAdam([model.token_embedding.weight], lr=enc.lr, betas=(0.9, 0.98), eps=1e-6),
        ]

        def lr_factor(s: int) -> float:
            return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor) for o in opts]
        gen = torch.Generator().manual_seed(cfg.seed)
        model.train()
        bar = tqdm(total=total, desc="encoder: train cocu-tiny", unit="step", disable=not progress)
        losses: list[float] = []
        for epoch in range(enc.epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(steps_per_epoch):
                idx = perm[s * bs:(s + 1) * bs]
                img = x_all[idx].float()
                flip = torch.rand(len(idx), generator=gen) < 0.5
                img[flip] = img[flip].flip(-1)  # captions name no left/right, so flips are label-preserving
                f_img, f_txt, scale = model(img, tok_all[idx])
                logits = scale * f_img @ f_txt.T
                labels = torch.arange(len(idx))
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o, sc in zip(opts, scheds):
                    o.step()
                    sc.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                losses.append(loss.item())
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-20:]):.3f}")
                bar.update(1)
        bar.close()
        recalibrate_batchnorm(model, x_all, bs)
        train_s = time.time() - t_start
        model.token_embedding.sparse = False
        model.eval()
        with atomic_path(out / CHECKPOINT) as tmp:
            torch.save({"name": TOY_MODEL, "epochs": enc.epochs, "state_dict": model.state_dict()}, tmp)
        # Evaluate the checkpoint as users will load it: open_clip from the saved file.
        from cocu_core.encoder.load import load_open_clip_checkpoint, make_text_encoder

        m2, pre2, tok2 = load_open_clip_checkpoint(TOY_MODEL, out / CHECKPOINT)
        ho_paths = [paths[i] for i in ho_idx]
        rep = retrieval_recall(embed_images(m2, pre2, ho_paths), [captions[i] for i in ho_idx], make_text_encoder(m2, tok2))
        rep.update({"first_loss": losses[0], "final_loss": float(np.mean(losses[-20:])), "train_seconds": round(train_s, 1),
                    "steps": total, "train_pairs": n})
        write_json_atomic(out / "report.json", rep)
        if log:
            log(f"cocu-tiny trained in {train_s:.0f}s: loss {losses[0]:.2f} -> {rep['final_loss']:.2f}, R@5 {rep['r@5']:.3f}")
        manifest = write_manifest(
            out, "encoder", data_fp, fields,
            counts={"train_pairs": n, "holdout_pairs": len(ho_idx), "steps": total},
            extra={"report": rep, "checkpoint": str((out / CHECKPOINT).resolve()), "model": TOY_MODEL,
                   "model_config_fp": fingerprint(read_json(out / f"{TOY_MODEL}.json"))},
        )
        manifest["cached"] = False
        return manifest
    finally:
        torch.set_num_threads(prev_threads)
