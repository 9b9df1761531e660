"""`cocu status`: for each stage of a config, done / stale / missing, its outputs, and why it is stale.

Why: the expected cache key of every stage is recomputed here with the same functions the stages
use (list fingerprint, encoder data key, the `*_inputs_fp` helpers, the stage field lists), chained
from the *expected* keys of its upstream stages; a stage is done when its manifest carries exactly
that key. A stale stage says which config field changed (old -> new) or which input did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.io import read_json, read_manifest
from cocu_core.stages import applicable_stages, stage_dir

DONE, STALE, MISSING, PARTIAL = "done", "stale", "missing", "partial"


@dataclass
class StageStatus:
    """One stage's state, the key a current output would carry, its outputs and the reasons it is not done."""

    stage: str
    state: str
    key: Optional[str] = None
    outputs: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why: name each config field whose value differs from what the stored output was made with."""
    import json

    old, new = (json.loads(json.dumps(d, default=str)) for d in (old, new))  # tuples and lists compare as stored
    out = []
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            out.append(f"{k}: {_short(old.get(k, '<unset>'))} -> {_short(new.get(k, '<unset>'))}")
    return out


def _key(inputs: str, fields: dict[str, Any]) -> str:
    return fingerprint({"inputs": inputs, "config": fields})


def compare(stage: str, folder: Path, inputs: Optional[str], fields: dict[str, Any], upstream: dict[str, StageStatus],
            input_reason: str = "its inputs changed") -> StageStatus:
    """Why: a manifest against the expected (inputs, fields): done, stale with reasons, or missing."""
    m = read_manifest(folder)
    bad_up = [f"upstream '{u}' is {s.state}" for u, s in upstream.items() if s.state != DONE]
    key = _key(inputs, fields) if inputs is not None else None
    if not m:
        parts = len(list((folder / "parts").glob("*/done.json"))) if (folder / "parts").is_dir() else 0
        partial = (folder / "state.json").is_file() or parts > 0
        why = [f"unfinished run (resumable{f': {parts} shards done' if parts else ''})"] if partial else []
        return StageStatus(stage, PARTIAL if partial else MISSING, key, [str(folder)] if partial else [], why + bad_up)
    outs = [str(folder)] + [f"{k}={v}" for k, v in (m.get("counts") or {}).items()][:6]
    if key is not None and m.get("cache_key") == key:
        return StageStatus(stage, DONE, key, outs)
    reasons = field_changes(m.get("config_fields") or {}, fields)
    if inputs is None or m.get("inputs_fingerprint") != inputs:
        reasons += bad_up or [input_reason]
    return StageStatus(stage, STALE, key, outs, reasons or ["made by another code version"])


def _toyworld(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.toyworld.generate import world_fingerprint

    folder = cfg.workpath / "toyworld"
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


def _url_table(cfg: PipelineConfig):
    """Why: the list the download stage would read now (for the toy world: its train split, loopback URLs)."""
    import pyarrow as pa

    from cocu_core.data.download import clean_pairs, read_pair_list

    if cfg.data.source == "toyworld":
        from cocu_core.toyworld import read_pairs

        pairs = read_pairs(cfg.workpath / "toyworld" / "train")
        table = pa.table({"url": [f"{_LOOPBACK}/{f}" for f in pairs.column("file").to_pylist()],
                          "caption": pairs.column("caption").cast(pa.string()),
                          "sample_id": pairs.column("key").cast(pa.string())})
        return clean_pairs(table)[0], _LOOPBACK
    return clean_pairs(read_pair_list(cfg.data.url_list, cfg.data.input_format, cfg.data.url_col,
                                      cfg.data.caption_col))[0], None


_LOOPBACK = "http://127.0.0.1:1"


def _download(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.data.download import DOWNLOAD_FIELDS, list_fingerprint

    fields = cfg.fields_for(DOWNLOAD_FIELDS)
    folder = cfg.workpath / "download"
    needs = {k: v for k, v in up.items() if k == "toyworld"}
    if any(s.state != DONE for s in needs.values()):
        st = compare("download", folder, None, fields, needs)
        return st
    table, base = _url_table(cfg)
    m = read_manifest(folder) or {}
    n_before = (m.get("counts") or {}).get("input")
    why = f"the url list changed ({table.num_rows} usable pairs now" + (f", {n_before} listed when it ran)" if n_before is not None else ")")
    return compare("download", folder, list_fingerprint(table, base), fields, needs, why)


def _encoder(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.encoder.toy_model import TOY_MODEL

    enc = cfg.encoder
    folder = cfg.workpath / "encoder"
    if enc.model == TOY_MODEL and not enc.pretrained and enc.train_toy:
        from cocu_core.encoder.train import ENCODER_FIELDS, TRAINER_VERSION, web_fingerprint

        fields = cfg.fields_for(ENCODER_FIELDS)
        needs = {k: v for k, v in up.items() if k == "toyworld"}
        if any(s.state != DONE for s in needs.values()):
            return compare("encoder", folder, None, fields, needs)
        data_fp = fingerprint({"web": web_fingerprint(cfg.workpath / "toyworld" / "web"), "trainer": TRAINER_VERSION})
        return compare("encoder", folder, data_fp, fields, needs, "the toy world's web split changed")
    from cocu_core.encoder.load import encoder_fingerprint

    try:
        return StageStatus("encoder", DONE, encoder_fingerprint(cfg), [f"given weights ({enc.model}, {enc.pretrained})"])
    except (FileNotFoundError, ValueError) as exc:
        return StageStatus("encoder", MISSING, None, reasons=[str(exc)])


def _embed(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.embed import EMBED_FIELDS, embed_inputs_fp

    needs = {k: up[k] for k in ("download", "encoder")}
    inputs = embed_inputs_fp(needs["download"].key, needs["encoder"].key) if all(s.key for s in needs.values()) else None
    return compare("embed", cfg.workpath / "embed", inputs, cfg.fields_for(EMBED_FIELDS), needs)


def _index(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.index.build import INDEX_FIELDS

    return compare("index", cfg.workpath / "index", up["embed"].key, cfg.fields_for(INDEX_FIELDS), {"embed": up["embed"]})


def _vocabulary(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.curation_stage import VOCAB_FIELDS, benchmark_classes, vocabulary_inputs_fp

    needs = {k: v for k, v in up.items() if k in ("embed", "toyworld")}
    inputs = None
    if up["embed"].key:
        try:
            inputs = vocabulary_inputs_fp(up["embed"].key, benchmark_classes(cfg))
        except FileNotFoundError:
            inputs = None
    return compare("vocabulary", cfg.workpath / "vocabulary", inputs, cfg.fields_for(VOCAB_FIELDS), needs,
                   "the embeddings or the benchmark classes changed")


def _concepts(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.concepts.embed import embeddings_cache_key
    from cocu_core.concepts.vocabulary import read_vocabulary

    folder = cfg.workpath / "concept_emb"
    have = sorted(folder.glob("concept_emb_*.npy")) if folder.is_dir() else []
    if up["vocabulary"].state != DONE or not up["encoder"].key:
        bad = [f"upstream '{u}' is {up[u].state}" for u in ("vocabulary", "encoder") if up[u].state != DONE]
        return StageStatus("concepts", STALE if have else MISSING, None, [str(folder)] if have else [], bad)
    concepts = read_vocabulary(cfg.workpath / "vocabulary" / "vocabulary.parquet").column("concept").to_pylist()
    key = embeddings_cache_key(concepts, up["encoder"].key, cfg.encoder.templates)
    path = folder / f"concept_emb_{key}.npy"
    if path.is_file():
        return StageStatus("concepts", DONE, key, [str(path), f"concepts={len(concepts)}"])
    why = ["none for this vocabulary, encoder and encoder.templates" + (f" ({len(have)} other sets kept)" if have else "")]
    return StageStatus("concepts", STALE if have else MISSING, key, [], why)


def _upstream_key(up: dict[str, StageStatus]) -> Optional[str]:
    from cocu_core.curation_stage import curation_upstream_key

    keys = {d: up[d].key for d in ("embed", "vocabulary", "index")}
    if not all(keys.values()) or not up["encoder"].key:
        return None
    return curation_upstream_key(keys, up["encoder"].key)  # type: ignore[arg-type]


def _curate(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    import pyarrow.parquet as pq

    from cocu_core.curation_stage import CURATE_FIELDS, shard_inputs_fp

    folder = stage_dir(cfg, "curate")
    fields = cfg.fields_for(CURATE_FIELDS)
    needs = {k: up[k] for k in ("embed", "vocabulary", "index", "concepts")}
    upstream = _upstream_key(up)
    meta = cfg.workpath / "embed" / "metadata.parquet"
    if up["embed"].state != DONE or not meta.is_file():
        shards = sorted(p.name[len("shard_"):] for p in folder.glob("shard_*")) if folder.is_dir() else []
    else:
        shards = sorted(set(pq.read_table(meta, columns=["shard"]).column("shard").to_pylist()))
    if not shards:
        return StageStatus("curate", MISSING, None, reasons=[f"upstream '{u}' is {s.state}" for u, s in needs.items()
                                                             if s.state != DONE])
    per = [compare("curate", folder / f"shard_{s}", shard_inputs_fp(upstream, s) if upstream else None, fields, needs,
                   "the embeddings, vocabulary or indexes changed") for s in shards]
    states = [p.state for p in per]
    n_done = states.count(DONE)
    outs = [str(folder), f"archives={len(list(folder.glob('archive_*.parquet')))}", f"shards={n_done}/{len(shards)} done"]
    key = fingerprint([p.key for p in per]) if all(p.key for p in per) else None
    if n_done == len(shards):
        return StageStatus("curate", DONE, key, outs)
    if all(s == MISSING for s in states):
        return StageStatus("curate", MISSING, key, [], per[0].reasons)
    reasons = []
    for p in per:
        for r in p.reasons:
            if r not in reasons:
                reasons.append(r)
    missing = states.count(MISSING)
    lead = f"{len(shards) - n_done} of {len(shards)} shards not current" + (f" ({missing} never curated)" if missing else "")
    return StageStatus("curate", STALE if states.count(STALE) else PARTIAL, key, outs, [lead] + reasons)


def _semantic_gap(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.curation_stage import GAP_FIELDS, gap_inputs_fp

    upstream = _upstream_key(up)
    needs = {k: up[k] for k in ("toyworld", "embed", "vocabulary", "index", "concepts")}
    inputs = gap_inputs_fp(upstream, up["toyworld"].key) if upstream and up["toyworld"].key else None
    return compare("semantic_gap", stage_dir(cfg, "semantic_gap"), inputs, cfg.fields_for(GAP_FIELDS), needs)


def _train(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.train.stage import train_dir_for, train_fields, train_inputs, train_variant

    folder = train_dir_for(cfg)
    needs = {k: up[k] for k in ("download", "curate") if k in up}
    if train_variant(cfg) in ("baseline", "oracle"):  # the caption alone, or the toy world's ground truth
        needs.pop("curate", None)
    inputs = None
    if all(s.state == DONE for s in needs.values()):
        try:
            inputs = train_inputs(cfg, train_variant(cfg))[2]
        except FileNotFoundError:
            inputs = None
    st = compare("train", folder, inputs, train_fields(cfg), needs)
    if st.state == DONE and (folder / "final.pt").is_file():
        st.outputs.insert(1, str(folder / "final.pt"))
    return st


def _evaluate(cfg: PipelineConfig, up: dict[str, StageStatus]) -> StageStatus:
    from cocu_core.evaluation.stage import EVAL_VERSION, dataset_root, eval_fields, file_fingerprint, resolve_checkpoint

    folder = stage_dir(cfg, "evaluate")
    needs = {"train": up["train"]} if "train" in up and not cfg.eval.checkpoint else {}
    inputs = None
    if all(s.state == DONE for s in needs.values()):
        try:
            ck = resolve_checkpoint(cfg, None)
            roots = {d: dataset_root(cfg, d) for d in cfg.eval.datasets}
            inputs = fingerprint({"checkpoint": file_fingerprint(ck), "version": EVAL_VERSION,
                                  "datasets": {d: str(r.resolve()) for d, r in roots.items()}})
        except (FileNotFoundError, ValueError):
            inputs = None
    return compare("evaluate", folder, inputs, eval_fields(cfg), needs, "the checkpoint or the datasets changed")


CHECKS: dict[str, Callable[[PipelineConfig, dict[str, StageStatus]], StageStatus]] = {
    "toyworld": _toyworld, "download": _download, "encoder": _encoder, "embed": _embed, "index": _index,
    "vocabulary": _vocabulary, "concepts": _concepts, "curate": _curate, "semantic_gap": _semantic_gap,
    "train": _train, "evaluate": _evaluate,
}


def pipeline_status(cfg: PipelineConfig) -> list[StageStatus]:
    """Why: every applicable stage in order, each judged against the keys its upstream stages should have."""
    out: dict[str, StageStatus] = {}
    for stage in applicable_stages(cfg):
        out[stage] = CHECKS[stage](cfg, out)
    return list(out.values())


def format_status(rows: list[StageStatus], cfg: PipelineConfig) -> str:
    """Why: one line per stage (state, outputs), the reasons of stale ones indented under it."""
    lines = [f"config '{cfg.name}', work folder {cfg.workpath}"]
    width = max(len(r.stage) for r in rows) if rows else 8
    for r in rows:
        lines.append(f"  {r.stage:<{width}}  {r.state:<7}  {', '.join(r.outputs)}".rstrip())
        for why in r.reasons:
            lines.append(f"  {'':<{width}}    - {why}")
    return "\n".join(lines)
