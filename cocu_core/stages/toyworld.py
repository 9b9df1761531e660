"""toyworld: the embedded procedural world of image-text pairs whose captions miss visible concepts (toy only).

Reads   data.toyworld (the generator's config)
Writes  toyworld/{web,train,val}/pairs.parquet, images, masks; toyworld/gap.parquet; toyworld/world.json
Key     world_fingerprint(data.toyworld) (the generator config plus its code version), in world.json
"""

from __future__ import annotations

from typing import Mapping

from cocu_core.config import PipelineConfig
from cocu_core.io import read_json
from cocu_core.layout import stage_dir
from cocu_core.stages.base import DONE, MISSING, STALE, Context, Report, Stage, StageStatus, field_changes
from cocu_core.toyworld.generate import generate_world, world_fingerprint

FIELDS = ["data.toyworld"]


def run(ctx: Context) -> Report:
    """Why: generate the three splits once; a rerun with the same config is a manifest hit."""
    out = ctx.dir("toyworld")
    manifest = generate_world(out, ctx.cfg.data.toyworld, workers=ctx.workers)
    return {"dir": str(out), **manifest}


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the world is current when world.json carries the fingerprint of today's generator config."""
    folder = stage_dir(cfg, "toyworld")
    fp = world_fingerprint(cfg.data.toyworld)
    p = folder / "world.json"
    if not p.is_file():
        return StageStatus("toyworld", MISSING, fp)
    m = read_json(p)
    outs = [str(folder)] + [f"{k}={v}" for k, v in (m.get("counts") or {}).items()]
    if m.get("fingerprint") == fp:
        return StageStatus("toyworld", DONE, fp, outs)
    changes = field_changes({f"data.toyworld.{k}": v for k, v in (m.get("config") or {}).items()},
                            {f"data.toyworld.{k}": v for k, v in cfg.data.toyworld.model_dump(mode="json").items()})
    return StageStatus("toyworld", STALE, fp, outs, changes or ["generator version changed"])


STAGE = Stage("toyworld", needs=(), run=run, status=status, fields=tuple(FIELDS), toy_only=True)
