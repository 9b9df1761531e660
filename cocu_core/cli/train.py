"""`cocu train`: train GroupViT on the curated concepts of one variant (the pipeline's train stage, alone)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cocu_core.cli.registry import UserError, add_config_args, command, load_config_args
from cocu_core.compat import ensure_torchvision
from cocu_core.config import TRAIN_VARIANTS
from cocu_core.stages.train import TrainStageError, train_dir_for, train_stage


def _setup(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("--variant", default=None,
                   choices=list(TRAIN_VARIANTS),
                   help="text inputs of the multi-label loss (default: train.variant, else curation.variant)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest checkpoint (otherwise it restarts)")
    p.add_argument("--out", default=None, help="output folder (default: <workdir>/train/<variant>)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train GroupViT on the download shards and concept archives; needs the curation stages done (cocu run)."""
    ensure_torchvision()
    from cocu_core.train.checkpoint import CheckpointError, list_step_checkpoints

    cfg = load_config_args(args)
    target = Path(args.out) if args.out else train_dir_for(cfg, args.variant)
    unfinished = list_step_checkpoints(target / "checkpoints")
    if unfinished and not args.resume and not (target / "manifest.json").is_file():
        print(f"train: an interrupted run left {unfinished[-1].name} in {target}; restarting "
              "(pass --resume to continue it)")
    try:
        rep = train_stage(cfg, args.variant, out_dir=target, resume=args.resume)
    except (TrainStageError, CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    state = "cached: already trained with these inputs and settings" if rep.get("cached") else \
        f"{rep['steps']} steps in {rep['seconds']:.0f} s ({rep['images_per_s']} images/s)"
    print(f"trained {rep['model']} ({rep['variant']}): {state}")
    print(f"loss {rep['first_loss']} -> {rep['last_loss']}; skipped samples: {rep['skipped'] or 'none'}")
    print(f"model: {rep['dir']}/final.pt; curve: {rep['dir']}/loss_curve.png")
    return 0


command("train", _setup)(cmd_train)
