"""`cocu encoder-report`: show that the curation encoder retrieves the right captions (training it if needed)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cocu_core import stages
from cocu_core.cli.registry import add_config_args, command, load_config_args
from cocu_core.concepts.embed import concept_text_embeddings
from cocu_core.config import ConfigError, PipelineConfig
from cocu_core.embeddings.store import load_embeddings
from cocu_core.encoder.load import load_encoder
from cocu_core.encoder.report import class_ranking, format_report, retrieval_recall
from cocu_core.encoder.toy_model import TOY_MODEL
from cocu_core.encoder.train import embed_images, holdout_split, load_web_pairs
from cocu_core.layout import stage_dir, toy_split
from cocu_core.stages.base import Context

TOY_WORKERS = 2  # rendering processes for the toy world (`cocu toyworld --workers`' default)
from cocu_core.toyworld import CLASS_NAMES, read_pairs


def ensure_toy_encoder(cfg: PipelineConfig, progress: bool = True, log=print) -> dict[str, Any]:
    """Why: the toy encoder needs the toy world's `web` split: the pipeline's own two stages make both (cached)."""
    ctx = Context(cfg, log=log, progress=progress, workers=TOY_WORKERS)
    stages.toyworld.run(ctx)
    return stages.encoder.run(ctx)


def evaluate_loaded(cfg: PipelineConfig) -> tuple[dict[str, Any], str]:
    """Why: a given (pretrained) encoder is judged on held-out toy web pairs, or on the embedded real pairs."""
    if cfg.data.source == "toyworld":
        enc = load_encoder(cfg)  # first, so missing weights fail before any work
        stages.toyworld.run(Context(cfg, workers=TOY_WORKERS))
        paths, captions = load_web_pairs(toy_split(cfg, "web"))
        _, ho = holdout_split(len(paths), cfg.encoder.holdout, cfg.seed)
        img = embed_images(enc.model, enc.preprocess, [paths[i] for i in ho])
        return retrieval_recall(img, [captions[i] for i in ho], enc.encode_text), "held-out toy web pairs"
    img, txt, meta = load_embeddings(stage_dir(cfg, "embed"))
    n = min(cfg.encoder.holdout, len(img))
    caps = meta.column("caption").to_pylist()[:n]
    first = {c: i for i, c in reversed(list(enumerate(caps)))}
    return retrieval_recall(img[:n], caps, lambda cs: txt[[first[c] for c in cs]]), f"the first {n} embedded pairs"


def toy_class_ranking(cfg: PipelineConfig, n_images: int = 1000, k: int = 3) -> dict[str, Any]:
    """Why: rank the toy world's classes per `train` image by prompt similarity, against the true classes."""
    import numpy as np

    enc = load_encoder(cfg)
    train = toy_split(cfg, "train")
    rows = read_pairs(train).slice(0, n_images).to_pylist()
    classes = [c for c in CLASS_NAMES if c != "background"]
    img = embed_images(enc.model, enc.preprocess, [train / r["file"] for r in rows])
    txt = concept_text_embeddings(classes, cfg.encoder.templates, enc.encode_text)
    present = np.array([[c in r["concepts"] for c in classes] for r in rows])
    return class_ranking(img @ txt.T, present, k)


def cmd_encoder_report(args: argparse.Namespace) -> int:
    """Print the curation encoder's zero-shot image->text retrieval (R@1, R@5), training the toy encoder if needed."""
    cfg = load_config_args(args)
    enc = cfg.encoder
    if enc.model == TOY_MODEL and not enc.pretrained:
        if not enc.train_toy:
            raise ConfigError("encoder.model is cocu-tiny with no encoder.pretrained and encoder.train_toy false: nothing to report")
        m = ensure_toy_encoder(cfg, progress=sys.stderr.isatty() or not args.quiet)
        rep = m["report"]
        title = (f"curation encoder {TOY_MODEL} ({m['counts']['train_pairs']} web pairs, {m['counts']['steps']} steps, "
                 f"{rep['train_seconds']:.0f}s training{', cached' if m.get('cached') else ''}); "
                 f"loss {rep['first_loss']:.2f} -> {rep['final_loss']:.2f}\nzero-shot on held-out toy web pairs:")
    else:
        rep, where = evaluate_loaded(cfg)
        title = f"curation encoder {enc.model}/{enc.pretrained}\nzero-shot on {where}:"
    print(format_report(rep, title))
    if cfg.data.source == "toyworld":
        cr = toy_class_ranking(cfg)
        k = cr["k"]
        print(f"zero-shot class ranking on {cr['n_images']} toy train images (top {k} of the toy classes by prompt "
              f"similarity): P@{k} {cr[f'p@{k}']:.3f} (chance {cr[f'chance_p@{k}']:.3f}), R@{k} {cr[f'r@{k}']:.3f}")
    if enc.model == TOY_MODEL and not enc.pretrained:
        print(f"checkpoint: {(stage_dir(cfg, 'encoder') / (TOY_MODEL + '.pt')).resolve()}")
    return 0


def _setup(p: argparse.ArgumentParser) -> None:
    add_config_args(p, required=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar when output is not a terminal")


command("encoder-report", _setup)(cmd_encoder_report)
