"""`cocu evaluate`: zero-shot segmentation mIoU (GroupViT's protocol) and classification of one or more models."""

from __future__ import annotations

import argparse
from pathlib import Path

from cocu_core.cli.registry import UserError, add_config_args, command, load_config_args
from cocu_core.compat import ensure_torchvision
from cocu_core.evaluation.datasets import DatasetLayoutError
from cocu_core.evaluation.report import format_table
from cocu_core.evaluation.roots import EvaluationError
from cocu_core.layout import stage_dir
from cocu_core.stages.evaluate import evaluate_stage


def _setup(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("--checkpoint", action="append", default=None, metavar="PATH",
                   help="our checkpoint (.pt or a train folder) or a Hugging Face GroupViT folder; repeat for more "
                        "rows of the table (default: the train stage's final model)")
    p.add_argument("--random-init", action="store_true",
                   help="also evaluate a randomly initialised model of train.model (the floor to beat)")
    p.add_argument("--dataset", action="append", default=None, metavar="NAME",
                   help="benchmark(s) to run instead of eval.datasets (toy, voc, context, coco_object, coco_stuff, "
                        "cityscapes, ade20k, imagenet_s50, imagenet_s300)")
    p.add_argument("--save-predictions", default=None, metavar="DIR", help="write the predictions as PNGs in each dataset's own label ids "
                        "(palette PNGs; ImageNet-S: R + 256 G), scorable against its label files")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images per dataset")
    p.add_argument("--out", default=None, help="output folder (default: <workdir>/evaluate/<variant>)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate GroupViT checkpoints zero-shot: Table-1 mIoU per dataset, classification, per-class IoU, panels."""
    ensure_torchvision()
    from cocu_core.train.checkpoint import CheckpointError

    for item, key in ((args.dataset, "eval.datasets"), (args.save_predictions, "eval.save_predictions"),
                      (args.max_images, "eval.max_images")):
        if item is not None:
            args.set = (args.set or []) + [f"{key}={item!r}" if not isinstance(item, list) else f"{key}={item}"]
    cfg = load_config_args(args)
    runs: list[tuple[str | None, bool]] = [(c, False) for c in (args.checkpoint or [None])]
    if args.random_init:
        runs.append((None, True))
    rows, outputs = {}, []
    try:
        for ck, rnd in runs:
            out = None
            if args.out:
                out = Path(args.out) / ("random-init" if rnd else Path(ck or "default").stem)
            elif ck:
                out = stage_dir(cfg, "evaluate", f"checkpoint-{Path(ck).resolve().parent.name}-{Path(ck).stem}")
            rep = evaluate_stage(cfg, ck, out_dir=out, random_init=rnd)
            rows[rep["label"]] = {d: r["mIoU"] for d, r in rep["segmentation"].items()}
            outputs.append((rep, rnd))
    except (EvaluationError, DatasetLayoutError, CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print("zero-shot segmentation mIoU (%):")
    print(format_table(rows, list(cfg.eval.datasets)))
    for rep, _ in outputs:
        for name, c in rep["classification"].items():
            print(f"{rep['label']}: zero-shot classification on {name}: top-1 {c['top1']:.1f}%, top-5 {c['top5']:.1f}% "
                  f"({c['images']} images)")
        speed = ", ".join(f"{d} {r['images_per_s']} images/s" for d, r in rep["segmentation"].items())
        print(f"{rep['label']}: {'cached' if rep.get('cached') else speed}; report: {rep['dir']}/report.md")
    return 0


command("evaluate", _setup)(cmd_evaluate)
