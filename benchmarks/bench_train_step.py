"""One GroupViT training step, ours against transformers' GroupViTModel, side by side in one run.

A step is forward, loss, backward and an AdamW step (GV's decay split, the same optimizer for every variant).
Both models have the identical configuration and start from the same weights (HF's are exported from ours;
their eval outputs are checked to agree before timing). Variants:

* ``hf``         - transformers GroupViTModel(return_loss=True): image-text loss on the captions.
* ``ours-same``  - our model doing the same work: captions only, image-text loss, no drop-path (HF has none).
* ``ours-cocu``  - our real training step: the registered config (drop-path as registered), caption + K=3
                   prompts per image, image-text + multi-label loss (``cocu_core.train.losses`` when present).

Steps are interleaved (one of each variant in turn, rotating) so load from other processes hits all alike;
the figure is the median after warm-up (``--stat min`` for the best step). On a machine shared with other
jobs, ``--threads 1 --clock cpu`` (this process's CPU seconds) gives figures that contention barely moves. Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the
max-RSS growth over the steps, measured per variant in its own subprocess. Run:
    .venv/bin/python benchmarks/bench_train_step.py [--config groupvit-toy groupvit-s] [--batch N]
        [--steps 5] [--warmup 2] [--device cpu] [--threads 2] [--optimizer default|foreach|fused]
        [--clock wall|cpu] [--stat median|min] [--no-memory] [--precision fp32|bf16]
``--precision bf16`` runs every variant's forward and loss under ``torch.autocast(dtype=torch.bfloat16)``, as
training does on CUDA. Each variant's forward + backward is also counted in FLOPs (torch's FlopCounterMode,
untimed): HF's FLOPs over ours is the speed-up our model reaches at HF's FLOP/s, the ceiling for any change
that is not in the kernels themselves.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cocu_core.model import create_model  # noqa: E402
from cocu_core.model.hf_adapter import hf_config_dict, hf_state_dict  # noqa: E402

CLOCK: Callable[[], float] = time.perf_counter  # --clock cpu: process CPU seconds (robust on a shared machine)
PRECISION = "fp32"  # --precision bf16: forward and loss under bf16 autocast (the trainer's CUDA setting)
STAT = "median"  # --stat min: best step (the uncontended cost when other processes share the cores)
DEFAULT_BATCH = {"groupvit-toy": 32, "groupvit-s": 8}
VARIANTS = ("hf", "ours-same", "ours-cocu")
K_PROMPTS = 3
_NOUNS = ["dog", "cat", "car", "tree", "boat", "house", "bird", "horse", "bicycle", "person", "chair", "table"]
_WORDS = ["a", "the", "small", "red", "old", "park", "near", "with", "on", "street", "sunny", "day", "two", "big"]

try:  # the trainer's losses and decay split, when that module exists
    from cocu_core.train.losses import image_text_loss, multi_label_loss
except ImportError:  # pragma: no cover - fallback for a tree without the training package
    image_text_loss = multi_label_loss = None
try:
    from cocu_core.train.optim import param_groups
except ImportError:  # pragma: no cover
    param_groups = None


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Why: symmetric InfoNCE on normalised features, the fallback image-text loss."""
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t() * scale
    labels = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def captions(b: int, seed: int) -> list[str]:
    """Why: caption-like strings of 8-20 words (CC3M captions are short), deterministic per seed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(b):
        n = int(torch.randint(8, 21, (1,), generator=g))
        words = [_WORDS[int(j)] for j in torch.randint(0, len(_WORDS), (n,), generator=g)]
        words[n // 2] = _NOUNS[i % len(_NOUNS)]
        out.append(" ".join(words))
    return out


def prompt_texts(b: int, seed: int) -> list[str]:
    """Why: K concept prompts per image, each a random one of CLIP's 80 templates, as training draws them."""
    try:
        from cocu_core.templates import get_templates

        templates = get_templates("full80")
    except ImportError:  # pragma: no cover
        templates = ("a photo of a {}.",)
    g = torch.Generator().manual_seed(seed + 1)
    t = torch.randint(0, len(templates), (b * K_PROMPTS,), generator=g).tolist()
    n = torch.randint(0, len(_NOUNS), (b * K_PROMPTS,), generator=g).tolist()
    return [templates[ti].format(_NOUNS[ni]) for ti, ni in zip(t, n)]


class Built(NamedTuple):
    """One variant ready to run: its model, a timed training step, its loss alone, and the inputs."""

    model: torch.nn.Module
    step: Callable[[], float]
    loss_fn: Callable[[], torch.Tensor]
    inputs: tuple[torch.Tensor, torch.Tensor]


def build(name: str, variant: str, batch: int, device: str, optimizer: str, seed: int = 0) -> Built:
    """Why: one variant's model, optimizer, inputs and step function, identical across variants."""
    torch.manual_seed(seed)
    ours = create_model(name)
    c = ours.config
    images = torch.randn(batch, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))
    caps = ours.tokenize(captions(batch, seed))
    prompts = ours.tokenize(prompt_texts(batch, seed)).view(batch, K_PROMPTS, -1)
    if variant == "hf":
        from transformers import GroupViTConfig as HFConfig
        from transformers import GroupViTModel

        cfg = {k: v for k, v in hf_config_dict(c).items() if k not in ("model_type", "transformers_version")}
        model = GroupViTModel(HFConfig(**cfg))
        missing, unexpected = model.load_state_dict(hf_state_dict(ours), strict=False)
        assert not unexpected and set(missing) <= {"text_model.embeddings.position_ids"}, (missing, unexpected)
    elif variant == "ours-same":
        model = create_model(name, drop_path_rate=0.0)
        model.load_state_dict(ours.state_dict())
    else:
        model = ours
    model = model.to(device).train()
    images, caps, prompts = images.to(device), caps.to(device), prompts.to(device)
    groups = param_groups(model, 0.05) if param_groups else [{"params": list(model.parameters())}]
    kw = {"foreach": True} if optimizer == "foreach" else {"fused": True} if optimizer == "fused" else {}
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, **kw)

    def variant_loss() -> torch.Tensor:
        if variant == "hf":
            return model(input_ids=caps, pixel_values=images, return_loss=True).loss
        if variant == "ours-same":
            out = model(images, caps.unsqueeze(1))
            it = image_text_loss or info_nce
            return it(out["image"], out["text"][:, 0], out["logit_scale"])
        out = model(images, torch.cat([caps.unsqueeze(1), prompts], dim=1))
        if image_text_loss is None:
            return info_nce(out["image"], out["text"][:, 0], out["logit_scale"])
        return (image_text_loss(out["image"], out["text"][:, 0], out["logit_scale"])
                + multi_label_loss(out["image"], out["text"][:, 1:], out["multi_label_logit_scale"]))

    def loss_fn() -> torch.Tensor:
        """The variant's forward and loss, under bf16 autocast with --precision bf16 (the trainer's CUDA setting)."""
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=PRECISION == "bf16"):
            return variant_loss()

    def step() -> float:
        """Returns the seconds spent in forward + loss + backward (the rest is the AdamW step)."""
        opt.zero_grad(set_to_none=True)
        t = CLOCK()
        loss = loss_fn()
        loss.backward()
        sync(device)
        fb = CLOCK() - t
        opt.step()
        return fb

    return Built(model, step, loss_fn, (images, caps))


def check_parity(name: str, device: str) -> float:
    """Why: timing means nothing unless the two models compute the same function: max |diff| of eval logits."""
    models = {v: build(name, v, 4, device, "default").model.eval() for v in ("hf", "ours-same")}
    images, caps = build(name, "hf", 4, device, "default").inputs
    with torch.no_grad():
        ref = models["hf"](input_ids=caps, pixel_values=images).logits_per_image
        out = models["ours-same"](images, caps)
        got = out["image"] @ out["text"][:, 0].t() * out["logit_scale"]
    return float((got - ref).abs().max())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(built: dict[str, Built], device: str, steps: int, warmup: int
                     ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Why: median seconds per step (and of its forward+backward part) of each variant, steps taken in turn;
    CUDA peak memory alongside."""
    runs = {v: b.step for v, b in built.items()}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    fbs: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peak: dict[str, float] = {}
    for i in range(warmup + steps):
        order = list(runs)[i % len(runs):] + list(runs)[: i % len(runs)]  # rotate: no variant always runs first
        for v in order:
            step = runs[v]
            if device.startswith("cuda"):
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t = CLOCK()
            fb = step()
            sync(device)
            if i >= warmup:
                times[v].append(CLOCK() - t)
                fbs[v].append(fb)
            if device.startswith("cuda"):
                peak[v] = max(peak.get(v, 0.0), (torch.cuda.max_memory_allocated() - base) / 2**20)
    stat = statistics.median if STAT == "median" else min
    return {v: stat(t) for v, t in times.items()}, {v: stat(t) for v, t in fbs.items()}, peak


def count_flops(built: dict[str, Built]) -> dict[str, float]:
    """Why: GFLOP of one forward + backward per variant, the work a step cannot avoid; their ratio is the
    speed-up each variant can reach at equal FLOP/s (untimed, after the timed steps).

    torch's FlopCounterMode has no formula for SDPA's CPU kernel, so the count runs SDPA on its math backend
    (the same products, decomposed into counted matmuls); HF's eager attention is counted as it runs.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for v, b in built.items():  # the timed variants themselves: FLOPs do not depend on their trained weights
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            b.loss_fn().backward()
        out[v] = counter.get_total_flops() / 1e9
    return out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_worker(name: str, variant: str, batch: int, optimizer: str, steps: int) -> None:
    """Why: peak RSS growth over one variant's steps, alone in a fresh process (prints JSON).

    Building the model (and importing transformers) peaks higher than a step may, so the high-water mark is
    reset after the build (Linux ``/proc/self/clear_refs`` = 5); without that, max RSS deltas from
    ``resource`` are used (then only growth beyond the build's peak shows).
    """
    step = build(name, variant, batch, "cpu", optimizer).step
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before, field = _status_kb("VmRSS"), "VmHWM"
    except OSError:
        before, field = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    for _ in range(steps):
        step()
    after = _status_kb(field) if field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (after - before) / 1024}))


def rss_peaks(name: str, batch: int, optimizer: str, threads: int) -> dict[str, float]:
    """Why: one subprocess per variant, so one variant's allocations never mask another's."""
    out = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--worker", v, "--config", name, "--batch", str(batch),
               "--optimizer", optimizer, "--threads", str(threads), "--steps", "2", "--precision", PRECISION]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise RuntimeError(f"memory worker for {v} failed:\n{res.stderr[-2000:]}")
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", nargs="+", default=list(DEFAULT_BATCH), help="registered model names")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: toy 32, groupvit-s 8)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--optimizer", choices=("default", "foreach", "fused"), default="default",
                    help="AdamW implementation, the same for every variant (default: what the trainer builds)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed seconds; cpu: this process's CPU seconds (use with --threads 1 on a busy machine)")
    ap.add_argument("--stat", choices=("median", "min"), default="median", help="statistic over the timed steps")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: forward and loss under bf16 autocast for every variant (the trainer's CUDA setting)")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK, STAT, PRECISION
    STAT, PRECISION = args.stat, args.precision
    if args.clock == "cpu":
        CLOCK = time.process_time
    if args.worker:
        rss_worker(args.config[0], args.worker, args.batch or DEFAULT_BATCH.get(args.config[0], 8), args.optimizer,
                   args.steps)
        return
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, {args.stat}, "
          f"AdamW {args.optimizer}, {args.precision}, {args.steps} timed steps after {args.warmup} warm-up, interleaved")
    for name in args.config:
        batch = args.batch or DEFAULT_BATCH.get(name, 8)
        diff = check_parity(name, args.device)
        built = {v: build(name, v, batch, args.device, args.optimizer) for v in VARIANTS}
        secs, fb, peak = time_interleaved(built, args.device, args.steps, args.warmup)
        flops = count_flops(built)
        del built
        if not args.device.startswith("cuda") and not args.no_memory:
            peak = rss_peaks(name, batch, args.optimizer, torch.get_num_threads())
        print(f"\n{name}, batch {batch} (eval logits max |ours - hf| = {diff:.2e})")
        print(f"  {'variant':<10} {'s/step':>8} {'img/s':>8} {'speed-up':>9}   {'fwd+bwd s':>9} {'speed-up':>9}"
              f"   {'AdamW s':>8} {'peak MB':>8}   {'GFLOP':>8} {'FLOP ratio':>10} {'GFLOP/s':>8}")
        for v in VARIANTS:
            mem = f"{peak[v]:8.0f}" if v in peak else f"{'-':>8}"
            print(f"  {v:<10} {secs[v]:8.3f} {batch / secs[v]:8.1f} {secs['hf'] / secs[v]:8.2f}x   {fb[v]:9.3f} "
                  f"{fb['hf'] / fb[v]:8.2f}x   {secs[v] - fb[v]:8.3f} {mem}   {flops[v]:8.1f} "
                  f"{flops['hf'] / flops[v]:9.2f}x {flops[v] / fb[v]:8.0f}")
        print("  GFLOP: one forward + backward (matmuls, convolutions, attention); FLOP ratio: HF's over the "
              "variant's,\n  the speed-up at equal FLOP/s; GFLOP/s: over the forward + backward time.")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
