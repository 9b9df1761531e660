"""The pipeline: eleven stages in run order, one module each, and the registry that the flow, `cocu status`
and `--only/--from` all read.

How data flows from a url list to mIoU (each module starts with what it Reads, Writes and its cache Key):

| stage | module | writes (under the work folder) |
|---|---|---|
| toyworld | `stages/toyworld.py` | `toyworld/{web,train,val}/` pairs, images, masks (toy config only) |
| download | `stages/download.py` | `download/shards/NNNNN.tar`, `samples.parquet` (img2dataset; the toy train split is served on 127.0.0.1) |
| encoder | `stages/encoder.py` | `encoder/` (cocu-tiny trained on `toyworld/web`, or the given open_clip weights checked) |
| embed | `stages/embed.py` | `embed/img_emb.npy`, `text_emb.npy`, `metadata.parquet` (clip-retrieval, row i aligned) |
| index | `stages/index.py` | `index/image.index`, `caption.index` (faiss, tuned to `index.target_recall`) |
| vocabulary | `stages/vocabulary.py` | `vocabulary/vocabulary.parquet` (caption concepts + benchmark classes) |
| concepts | `stages/concepts.py` | `concept_emb/concept_emb_<key>.npy` |
| curate | `stages/curate.py` | `curate/<variant>/archive_NNNNN.parquet` (algorithm in `curation/`) |
| semantic_gap | `stages/semantic_gap.py` | `reports/semantic_gap/` (toy config only) |
| train | `stages/train.py` | `train/<variant>/final.pt` (loop in `train/loop.py`) |
| evaluate | `stages/evaluate.py` | `evaluate/<variant>/results.json` (windows in `evaluation/segmentation.py`) |
"""

from __future__ import annotations

from typing import Optional

from cocu_core.config import ConfigError, PipelineConfig
from cocu_core.layout import lock_path
from cocu_core.layout import stage_dir  # noqa: F401  (re-exported: `from cocu_core.stages import stage_dir`)
from cocu_core.lock import state_line
from cocu_core.stages import (concepts, curate, download, embed, encoder, evaluate, index, semantic_gap, toyworld,
                              train, vocabulary)
from cocu_core.stages.base import Stage, StageStatus
from cocu_core.stages.download import preflight  # noqa: F401  (re-exported: checked before any stage runs)

STAGE_SPECS: tuple[Stage, ...] = tuple(m.STAGE for m in (toyworld, download, encoder, embed, index, vocabulary,
                                                          concepts, curate, semantic_gap, train, evaluate))
STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_SPECS)  # the run order
NAMES = STAGES  # the registry's names, as timm's list_models()
_BY_NAME = {s.name: s for s in STAGE_SPECS}
_MODULES = {m.STAGE.name: m for m in (toyworld, download, encoder, embed, index, vocabulary, concepts, curate,
                                      semantic_gap, train, evaluate)}


# The config fields no stage keys, each with the reason none needs to (`tests/test_field_classification.py` fails
# on a field that is neither here, nor in a stage module's FIELDS (or another *_FIELDS key list), nor in its
# RUNTIME_FIELDS). A dotted name covers every field under it.
UNKEYED_FIELDS: dict[str, str] = {
    "name": "the run's name in artifact titles",
    "workdir": "where the outputs go, not what they hold",
    "data.source": "chooses where the list comes from; the list's cleaned contents are the download's input key",
    "data.url_list": "the list's path; its cleaned contents, not the path, are the download's input key",
    "data.distributor": "how img2dataset spreads the same downloads (this machine, Spark, Ray)",
    "encoder.train_toy": "chooses training cocu-tiny or given weights; the weights' fingerprint keys embed",
    "encoder.cache_dir": "where named weights are looked up; the weights' fingerprint keys embed",
    "encoder.train_threads": "torch CPU threads while training the toy encoder",
    "curation.kmeans_threads": "threads of the clustering step",
    "runtime": "concurrency, threads, task engine, schedule and versions kept: how the stages run, not what they write",
    "ablation": "`cocu ablation`'s own settings, keyed by its report (cocu_core.ablation.ablation_fields)",
    "storage": "how remote locations are reached and where copies of published archives go, not what a stage writes",
}


def key_fields() -> dict[str, tuple[str, ...]]:
    """Why: every config field some stage keys, with the stages that key it: its FIELDS and any other `*_FIELDS`
    key list of its module (semantic_gap's SIGNAL_FIELDS); read from the code, so a new stage list is seen."""
    out: dict[str, tuple[str, ...]] = {}
    for name, mod in _MODULES.items():
        for attr in dir(mod):
            if attr.endswith("FIELDS") and attr != "RUNTIME_FIELDS" and attr.isupper():
                for f in getattr(mod, attr):
                    out[f] = tuple(dict.fromkeys(out.get(f, ()) + (name,)))
    return out


def runtime_fields() -> dict[str, str]:
    """Why: every field recorded but not keyed, with who declares it: a stage module's RUNTIME_FIELDS, or
    UNKEYED_FIELDS for the fields no stage reads for its results."""
    out = {f: f"stage {name}" for name, mod in _MODULES.items() for f in getattr(mod, "RUNTIME_FIELDS", ())}
    return {**out, **{f: "UNKEYED_FIELDS" for f in UNKEYED_FIELDS}}


class StageError(ConfigError):
    """A run names a stage that does not exist or does not apply to its config."""


def get(name: str) -> Stage:
    """Why: a stage's spec by name; a misspelt one is the same one line as on the command line."""
    return _BY_NAME[check_stage_name(name)]


def applicable_stages(cfg: PipelineConfig) -> list[str]:
    """Why: the toy world and its gap report exist only for `data.source: toyworld`."""
    return [s.name for s in STAGE_SPECS if not (s.toy_only and cfg.data.source != "toyworld")]


def check_stage_name(name: str, option: str = "stage") -> str:
    """Why: a misspelt stage is one clear line listing the valid names, before anything runs."""
    key = name.strip().replace("-", "_")
    if key not in STAGES:
        raise StageError(f"{option} '{name}' is not a stage; stages: {', '.join(STAGES)}")
    return key


def select_stages(cfg: PipelineConfig, only: Optional[str] = None, from_stage: Optional[str] = None) -> list[str]:
    """Why: `only` runs one stage, `from_stage` that stage and every later one; neither runs them all."""
    if only and from_stage:
        raise StageError("give --only or --from, not both")
    stages = applicable_stages(cfg)
    for given, option in ((only, "--only"), (from_stage, "--from")):
        if given:
            key = check_stage_name(given, option)
            if key not in stages:
                raise StageError(f"{option} '{given}' does not apply to config '{cfg.name}' "
                                 "(needs data.source: toyworld); "
                                 f"stages here: {', '.join(stages)}")
            return [key] if option == "--only" else stages[stages.index(key):]
    return stages


def pipeline_status(cfg: PipelineConfig) -> list[StageStatus]:
    """Why: every applicable stage in order, each judged against the keys its upstream stages should have."""
    out: dict[str, StageStatus] = {}
    for stage in applicable_stages(cfg):
        out[stage] = _BY_NAME[stage].status(cfg, out)
    return list(out.values())


def format_status(rows: list[StageStatus], cfg: PipelineConfig) -> str:
    """Why: one line per stage (state, outputs), the reasons of stale ones indented under it."""
    lines = [f"config '{cfg.name}', work folder {cfg.workpath}"]
    width = max(len(r.stage) for r in rows) if rows else 8
    for r in rows:
        lines.append(f"  {r.stage:<{width}}  {r.state:<7}  {', '.join(r.outputs)}".rstrip())
        for why in r.reasons:
            lines.append(f"  {'':<{width}}    - {why}")
    rt = cfg.runtime
    lines.append("re-curation schedule (deployment cocu-recurate, set by `cocu deploy`): "
                 + (f"cron '{rt.recurate_cron}' ({rt.recurate_timezone})" if rt.recurate_cron else "none"))
    lines.append(f"work-folder lock: {state_line(lock_path(cfg))}")
    return "\n".join(lines)
