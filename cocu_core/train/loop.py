"""The GroupViT training loop: one function for a single process, torchrun workers, CPU and CUDA.

Exact resume: the data order and every per-sample random draw are functions of (seed, epoch, sample
index), and the model's own randomness (Gumbel noise, drop-path) is reseeded at every step from
(seed, step, rank); a checkpoint holds the weights, optimiser, schedule, data position and curve, so a
run killed after step n and resumed repeats steps n+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from cocu_core.config import PipelineConfig, config_from_dict
from cocu_core.io import read_json, write_bytes_atomic, write_json_atomic
from cocu_core.plot import save_line_plot
from cocu_core.train import checkpoint as ckpt
from cocu_core.train.distributed import DistEnv, all_mean, barrier, broadcast_object, init_distributed

CURVE_FIELDS = ["step", "epoch", "loss", "loss_image_text", "loss_multi_label", "lr", "images_per_s", "seconds"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where."""


def step_seed(seed: int, step: int, rank: int) -> int:
    """Why: the model's random draws at a step depend only on (seed, step, rank), never on what ran before."""
    return int(np.random.SeedSequence([seed, step, rank, 0xC0C0]).generate_state(1, np.uint64)[0] % (2**63 - 1))


def resolve_threads(requested: int, processes: int) -> int:
    """Why: processes on one machine share its cores; never oversubscribe them."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes))


def autocast_for(device: torch.device, precision: str):
    """Why: bf16 autocast on CUDA (the protocol's mixed precision), fp32 on CPU unless asked otherwise."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def write_curve(out_dir: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Why: the loss curve as CSV (for tools) and PNG (for people and the Prefect UI)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CURVE_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_bytes_atomic(out_dir / "loss_curve.csv", buf.getvalue().encode())
    steps = [r["step"] for r in rows]
    series = {k: (steps, [r[k] for r in rows]) for k in ("loss", "loss_image_text", "loss_multi_label")}
    save_line_plot(out_dir / "loss_curve.png", series, title, "step", "loss")


def _build(cfg: PipelineConfig, env: DistEnv):
    """Why: the same model on every rank (seeded init), heads synchronised, wrapped for DDP when distributed."""
    from cocu_core.model import create_model

    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.train.model, **cfg.train.model_overrides).to(env.device)
    wrapped: torch.nn.Module = model
    if env.world_size > 1:
        from cocu_core.train.sync_bn import convert_sync_batchnorm

        model = convert_sync_batchnorm(model, env.device).to(env.device)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model, wrapped


def train_loop(cfg: PipelineConfig, shards_dir: Path, archive_dir: Optional[Path], out_dir: Path, variant: str,
               resume: bool = True, log: Callable[[str], None] = print, progress: bool = True,
               extra_meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Why: train GroupViT on the shards (and archive) into `out_dir`, resuming from its newest checkpoint."""
    from cocu_core.train.data import TrainData

    tc = cfg.train
    env = init_distributed(tc.device)
    torch.set_num_threads(resolve_threads(tc.threads, tc.processes if env.world_size > 1 else 1))
    out_dir = Path(out_dir)
    model, wrapped = _build(cfg, env)
    data = TrainData(shards_dir, archive_dir, variant, model.config.image_size, tc, rank=env.rank,
                     world_size=env.world_size, index_dir=out_dir / "shard_index",
                     context_length=model.config.context_length, pin_memory=env.device.type == "cuda")
    try:
        return _train(cfg, env, model, wrapped, data, out_dir, variant, resume, log, progress, extra_meta)
    finally:
        data.close()  # the loader's persistent workers end with the run


def _train(cfg: PipelineConfig, env: DistEnv, model, wrapped, data, out_dir: Path, variant: str, resume: bool,
           log: Callable[[str], None], progress: bool, extra_meta: Optional[dict[str, Any]]) -> dict[str, Any]:
    """Why: the loop itself, over batches whose images and token ids the loader workers made."""
    from tqdm import tqdm

    from cocu_core.train.losses import total_loss
    from cocu_core.train.optim import build_optimizer, build_schedule

    tc = cfg.train
    ck_dir = out_dir / "checkpoints"
    steps_per_epoch = data.steps_per_epoch
    if steps_per_epoch < 1:
        raise TrainingError(f"{data.n_samples} usable samples cannot fill one global batch of {tc.batch_size}; "
                            "lower train.batch_size or add data")
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps:
        total_steps = min(total_steps, tc.max_steps)
    optimizer = build_optimizer(model, tc, tc.batch_size)
    schedule = build_schedule(tc, tc.batch_size, steps_per_epoch)

    start_epoch, start_in_epoch, global_step, curve = 0, 0, 0, []
    model_cfg = model.config.to_dict()
    latest = ckpt.list_step_checkpoints(ck_dir)[-1] if (resume and env.is_main and ckpt.list_step_checkpoints(ck_dir)) else None
    latest = broadcast_object(str(latest) if latest else None)
    if latest:
        state = ckpt.load_checkpoint(Path(latest), model_cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, start_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        curve = state["curve"]
        if start_in_epoch >= steps_per_epoch:
            start_epoch, start_in_epoch = start_epoch + 1, 0
        if env.is_main:
            log(f"train: resumed from {Path(latest).name} (epoch {start_epoch}, step {global_step})")

    def save(path: Path, epoch: int, in_epoch: int) -> None:
        ckpt.save_checkpoint(path, {
            "model_name": tc.model, "model_config": model_cfg, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch,
            "step_in_epoch": in_epoch, "global_step": global_step, "curve": curve, "rng": ckpt.rng_state(),
            "variant": variant, "train_config": tc.model_dump(mode="json"), **(extra_meta or {}),
        })

    bar = tqdm(total=total_steps, initial=global_step, desc=f"train {tc.model} ({variant})", unit="step",
               disable=not (progress and env.is_main), dynamic_ncols=True)
    skipped: dict[str, int] = dict(data.skipped_at_index)
    t_start = time.time()
    t_last = time.time()
    images_seen = 0
    wrapped.train()
    done = global_step >= total_steps
    epoch = start_epoch
    while not done and epoch < tc.epochs:
        in_epoch = start_in_epoch if epoch == start_epoch else 0
        for batch in data.batches(epoch, in_epoch):
            for k, v in batch.skipped.items():
                skipped[k] = skipped.get(k, 0) + v
            n = len(batch)
            fewest, total = torch.tensor(float(n), device=env.device), torch.tensor(float(n), device=env.device)
            if env.world_size > 1:  # the losses gather unequal batches, but every rank must take the step
                torch.distributed.all_reduce(fewest, op=torch.distributed.ReduceOp.MIN)
                torch.distributed.all_reduce(total)
            in_epoch += 1
            if fewest.item() < 1:  # every sample of some rank's slice was broken: skip the step everywhere
                global_step += 1
                continue
            images = batch.images.to(env.device, non_blocking=True)
            tokens = batch.tokens.to(env.device, non_blocking=True)  # tokenized in the loader workers
            schedule.apply(optimizer, global_step)
            torch.manual_seed(step_seed(tc.seed, global_step, env.rank))
            with autocast_for(env.device, tc.precision):
                out = wrapped(images, tokens)
                loss, parts = total_loss(out, tc.multi_label_weight)
                if env.world_size > 1:  # weight each rank's mean by its rows: DDP's average is the global batch's mean
                    weight = n * env.world_size / total.item()
                    loss = loss * weight
                    parts = {k: float(v) * weight for k, v in parts.items()}
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at step {global_step} (epoch {epoch}); lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            global_step += 1
            images_seen += n * env.world_size
            now = time.time()
            ips = n * env.world_size / max(now - t_last, 1e-9)
            t_last = now
            lr = optimizer.param_groups[0]["lr"]
            logged = all_mean(torch.tensor([loss.item(), float(parts["image_text"]), float(parts["multi_label"])],
                                           device=env.device)).cpu()
            if env.is_main:
                bar.update(1)
                bar.set_postfix(loss=f"{logged[0].item():.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
                if global_step % tc.log_every == 0 or global_step == total_steps:
                    curve.append({"step": global_step, "epoch": epoch, "loss": round(logged[0].item(), 6),
                                  "loss_image_text": round(logged[1].item(), 6),
                                  "loss_multi_label": round(logged[2].item(), 6), "lr": lr,
                                  "images_per_s": round(ips, 2), "seconds": round(now - t_start, 3)})
            last = global_step >= total_steps
            if env.is_main and (global_step % tc.checkpoint_every == 0 or last):
                save(ckpt.step_path(ck_dir, global_step), epoch, in_epoch)
                ckpt.prune_checkpoints(ck_dir, tc.keep_checkpoints)
                write_curve(out_dir, curve, f"{tc.model} ({variant}) training loss")
            barrier()
            if last:
                done = True
                break
        epoch += 1
    bar.close()
    elapsed = time.time() - t_start
    result: dict[str, Any] = {"steps": global_step, "epochs": tc.epochs, "steps_per_epoch": steps_per_epoch,
                              "samples": data.n_samples, "skipped": skipped, "seconds": round(elapsed, 2),
                              "images_per_s": round(images_seen / elapsed, 2) if elapsed > 0 else None,
                              "first_loss": curve[0]["loss"] if curve else None,
                              "last_loss": curve[-1]["loss"] if curve else None, "variant": variant,
                              "model": tc.model, "world_size": env.world_size, "device": str(env.device)}
    if env.is_main:
        save(out_dir / "final.pt", epoch, 0)
        write_curve(out_dir, curve, f"{tc.model} ({variant}) training loss")
        write_json_atomic(out_dir / "train_report.json", result)
    barrier()
    return result


def worker_main(spec_path: str) -> None:
    """Why: the entry torchrun starts in every process (`python -m cocu_core.train._runner spec.json`)."""
    from cocu_core.train.distributed import shutdown

    spec = read_json(spec_path)
    cfg = config_from_dict(spec["config"], spec_path)
    try:
        train_loop(cfg, Path(spec["shards_dir"]), Path(spec["archive_dir"]) if spec.get("archive_dir") else None,
                   Path(spec["out_dir"]), spec["variant"], resume=spec.get("resume", True),
                   progress=spec.get("progress", True), extra_meta=spec.get("extra_meta"))
    finally:
        shutdown()
