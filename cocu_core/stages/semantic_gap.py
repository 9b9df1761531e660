"""semantic_gap: the toy world's semantic-gap table (precision/recall of the top-3 curated concepts against ground
truth, per expansion x ranking method) and, beside it, what training sees per arm whose inputs exist (toy only).

Reads   the curation inputs (embed/, vocabulary/, concept_emb/, index/), toyworld/train (ground truth), the
        archives and download of every available arm (training signal)
Writes  reports/semantic_gap/semantic_gap.json (the gap rows; the encoder's salience bias: recall of present classes
        by area quartile) + manifest.json; reports/semantic_gap/training_signal/
Key     gap_inputs_fp(curation upstream key, world fingerprint) + FIELDS; the training signal: the arms'
        training inputs + world fingerprint + SIGNAL_VERSION, with SIGNAL_FIELDS
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from cocu_core.config import TRAIN_VARIANTS, PipelineConfig, fingerprint
from cocu_core.evaluation.training_signal import format_training_signal, training_signal
from cocu_core.io import read_json, stage_is_current, write_bytes_atomic, write_json_atomic, write_manifest
from cocu_core.layout import stage_dir, toy_split, training_signal_dir
from cocu_core.stages.base import Context, Report, Stage, StageStatus, compare
from cocu_core.stages.curate import Prepared, curation_upstream_fp, expected_upstream_key, oracle_archive, prepare
from cocu_core.stages.train import train_inputs
from cocu_core.toyworld.generate import toy_ground_truth
from cocu_core.toyworld.oracle import download_key, toy_world_fingerprint

if TYPE_CHECKING:
    from cocu_core.curation.data import CurationData

SIGNAL_VERSION = 1  # bump when the same inputs and settings score differently
SIGNAL_FIELDS = ["train.epochs", "train.batch_size", "train.k_prompts", "train.seed", "train.max_steps"]
FIELDS = ["curation.n_neighbours", "curation.max_ngram", "encoder.templates"]


def gap_inputs_fp(upstream_fp: str, world_fp: str) -> str:
    """Why: the semantic-gap report's inputs key, shared with `cocu status`."""
    return fingerprint({"upstream": upstream_fp, "toyworld": world_fp})


def semantic_gap_stage(data: CurationData, cfg: PipelineConfig, encoder_id: str, image_index=None,
                       caption_index=None) -> tuple[dict[str, dict], bool]:
    """Why: the toy world's semantic-gap table, recomputed only when its inputs or fields change; beside it, what
    training sees per arm whose inputs exist (`training_signal/`, its own cache: training settings and archives)."""
    from cocu_core.evaluation.semantic_gap import salience_report, semantic_gap_report  # torch (curation package)

    out = stage_dir(cfg, "semantic_gap")
    fields = cfg.fields_for(FIELDS)
    inputs = gap_inputs_fp(curation_upstream_fp(cfg, encoder_id),
                           read_json(stage_dir(cfg, "toyworld") / "world.json")["fingerprint"])
    if stage_is_current(out, inputs, fields):
        rows, cached = read_json(out / "semantic_gap.json")["rows"], True
    else:
        gt, named = toy_ground_truth(toy_split(cfg, "train"))
        rows, cached = semantic_gap_report(data, cfg, gt, named, image_index, caption_index), False
        write_json_atomic(out / "semantic_gap.json", {"rows": rows,
                                                      "salience": salience_report(data, toy_split(cfg, "train"))})
        write_manifest(out, "semantic_gap", inputs, fields, {"images": len(gt), "methods": len(rows)})
    training_signal_stage(cfg, training_signal_dir(cfg))
    return rows, cached


def available_arms(cfg: PipelineConfig) -> list[str]:
    """Why: the arms whose training inputs exist now (the oracle wherever the toy world was downloaded)."""
    out = []
    for arm in TRAIN_VARIANTS:
        try:
            if arm == "oracle":
                toy_world_fingerprint(cfg)
                download_key(cfg)
            else:
                train_inputs(cfg, arm)
        except FileNotFoundError:
            continue
        out.append(arm)
    return out


def arm_inputs(cfg: PipelineConfig, arms: Sequence[str]) -> dict[str, tuple[Path, Optional[Path]]]:
    """Why: each arm's shards and archive folder as its training reads them (the oracle's archive built first)."""
    if "oracle" in arms:
        oracle_archive(cfg)  # refuses clearly without a toy world
    return {a: train_inputs(cfg, a)[:2] for a in arms}


def training_signal_stage(cfg: PipelineConfig, out_dir: Optional[Path] = None,
                          arms: Optional[Sequence[str]] = None) -> tuple[dict[str, dict[str, Any]], bool]:
    """Why: the semantic-gap report's training-signal table, cached on the arms' training inputs and the
    training fields it replays (default folder `<workdir>/reports/semantic_gap/training_signal`)."""
    out = Path(out_dir) if out_dir else training_signal_dir(cfg)
    arms = list(arms) if arms is not None else available_arms(cfg)
    if not arms:  # nothing trainable yet (no download): nothing to replay
        return {}, False
    if "oracle" in arms:
        oracle_archive(cfg)
    inputs = fingerprint({"arms": {a: train_inputs(cfg, a)[2] for a in arms}, "toyworld": toy_world_fingerprint(cfg),
                          "version": SIGNAL_VERSION})
    fields = cfg.fields_for(SIGNAL_FIELDS)
    if stage_is_current(out, inputs, fields):
        return read_json(out / "training_signal.json")["arms"], True
    rows = training_signal(cfg, arm_inputs(cfg, arms))
    write_json_atomic(out / "training_signal.json", {"arms": rows})
    write_bytes_atomic(out / "training_signal.md", (format_training_signal(rows) + "\n").encode())
    write_manifest(out, "training_signal", inputs, fields, {"arms": len(rows)}, {"arm_names": list(rows)})
    return rows, False


def run(ctx: Context, prep: Optional[Prepared] = None) -> Report:
    """Why: the gap table over the curation's shared inputs (loaded here when the flow did not pass them)."""
    from cocu_core.evaluation.semantic_gap import examples_markdown, format_gap_report, format_salience  # torch

    cfg = ctx.cfg
    prep = prep or prepare(ctx)
    rows, cached = semantic_gap_stage(prep.data, cfg, prep.encoder_id, prep.indexes["image"], prep.indexes["caption"])
    signal, _ = training_signal_stage(cfg)  # cached: the stage above computed it
    bias = read_json(stage_dir(cfg, "semantic_gap") / "semantic_gap.json").get("salience") or []
    return {"rows": rows, "table": format_gap_report(rows), "training_signal": signal, "cached": cached,
            "salience": bias, "salience_table": format_salience(bias) if bias else "",
            "examples": examples_markdown(ctx.dir("curate"), toy_split(cfg, "train"), prep.data)}


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the expected key from the curation upstream's and the toy world's expected keys."""
    upstream = expected_upstream_key(up)
    needs = {k: up[k] for k in ("toyworld", "embed", "vocabulary", "index", "concepts")}
    inputs = gap_inputs_fp(upstream, up["toyworld"].key) if upstream and up["toyworld"].key else None
    return compare("semantic_gap", stage_dir(cfg, "semantic_gap"), inputs, cfg.fields_for(FIELDS), needs)


STAGE = Stage("semantic_gap", needs=("toyworld", "embed", "index", "vocabulary", "concepts"), run=run,
              status=status, fields=tuple(FIELDS), toy_only=True)
