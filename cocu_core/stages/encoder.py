"""encoder: the curation CLIP; the toy world trains `cocu-tiny` on its web split, a real config checks its weights.

Reads   toyworld/web (toy encoder) or encoder.model + encoder.pretrained (open_clip weights)
Writes  encoder/cocu-tiny.pt, encoder/report.json, encoder/manifest.json (toy encoder only)
Key     toy: data_key(toyworld/web) (web split + trainer version) + FIELDS; given weights: their fingerprint
"""

from __future__ import annotations

from typing import Mapping

from cocu_core.config import PipelineConfig
from cocu_core.encoder.load import encoder_fingerprint, resolve_weights
from cocu_core.encoder.toy_model import TOY_MODEL
from cocu_core.encoder.train import ENCODER_FIELDS, data_key, train_toy_encoder
from cocu_core.layout import stage_dir, toy_split
from cocu_core.stages.base import DONE, MISSING, Context, Report, Stage, StageStatus, compare

FIELDS = ENCODER_FIELDS  # the toy trainer reads them (encoder/train.py)


def trains_toy(cfg: PipelineConfig) -> bool:
    """Why: the one place that decides between training `cocu-tiny` and using the configured weights."""
    enc = cfg.encoder
    return enc.model == TOY_MODEL and not enc.pretrained and enc.train_toy


def run(ctx: Context) -> Report:
    """Why: train (or reuse) the toy encoder, or check that the configured open_clip weights are present."""
    cfg = ctx.cfg
    if trains_toy(cfg):
        m = train_toy_encoder(cfg, toy_split(cfg, "web"), ctx.dir("encoder"), log=ctx.log, progress=ctx.progress)
        return {"fingerprint": encoder_fingerprint(cfg), "cached": bool(m.get("cached")), "report": m["report"],
                "counts": m["counts"]}
    arch, ckpt = resolve_weights(cfg)
    return {"fingerprint": encoder_fingerprint(cfg), "cached": True, "model": arch, "weights": str(ckpt)}


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the toy encoder against its web split and fields; given weights are done when they resolve."""
    enc = cfg.encoder
    folder = stage_dir(cfg, "encoder")
    if trains_toy(cfg):
        fields = cfg.fields_for(FIELDS)
        needs = {k: v for k, v in up.items() if k == "toyworld"}
        if any(s.state != DONE for s in needs.values()):
            return compare("encoder", folder, None, fields, needs)
        return compare("encoder", folder, data_key(toy_split(cfg, "web")), fields, needs,
                       "the toy world's web split changed")
    try:
        return StageStatus("encoder", DONE, encoder_fingerprint(cfg), [f"given weights ({enc.model}, {enc.pretrained})"])
    except (FileNotFoundError, ValueError) as exc:
        return StageStatus("encoder", MISSING, None, reasons=[str(exc)])


STAGE = Stage("encoder", needs=("toyworld",), run=run, status=status, fields=tuple(FIELDS))
