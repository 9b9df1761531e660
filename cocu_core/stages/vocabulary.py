"""vocabulary: the concept vocabulary, physical nouns and noun phrases of the corpus's captions (WordNet), unioned
with the benchmark's classes.

Reads   embed/metadata.parquet (captions), embed/manifest.json (its cache key); the benchmark's class-name file
Writes  vocabulary/vocabulary.parquet, vocabulary/report.json, vocabulary/manifest.json
Key     vocabulary_inputs_fp(embed key, benchmark classes) + FIELDS
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from cocu_core.concepts.corpus import metadata_batches
from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.io import read_json, stage_is_current, write_json_atomic, write_manifest
from cocu_core.layout import stage_dir, toy_split
from cocu_core.stages.base import Context, Report, Stage, StageStatus, compare, upstream_key

FIELDS = ["curation.vocab_size", "curation.max_ngram"]


def benchmark_classes(cfg: PipelineConfig) -> list[str]:
    """Why: every evaluation class must be a possible concept; read from the benchmark's class file."""
    if cfg.eval.class_names:
        path = Path(cfg.eval.class_names)
    elif cfg.eval.voc_root:
        path = Path(cfg.eval.voc_root) / "class_names.txt"
    else:
        path = toy_split(cfg, "val") / "class_names.txt"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark class-name file not found: {path} (set eval.class_names)")
    names = [n.strip() for n in path.read_text().splitlines() if n.strip()]
    return [n for n in names if n.lower() not in ("background", "__background__")]


def vocabulary_inputs_fp(embed_key: str, classes: Sequence[str]) -> str:
    """Why: the vocabulary's inputs key (embeddings + benchmark classes), shared with `cocu status`."""
    return fingerprint({"embed": embed_key, "classes": list(classes)})


def vocabulary_stage(embed_dir: Path, out_dir: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Why: build the concept vocabulary once from the corpus's captions (plus benchmark classes)."""
    from cocu_core.concepts.vocabulary import build_vocabulary, write_vocabulary

    classes = benchmark_classes(cfg)
    fields = cfg.fields_for(FIELDS)
    inputs = vocabulary_inputs_fp(upstream_key(embed_dir), classes)
    if stage_is_current(out_dir, inputs, fields):
        return {**read_json(out_dir / "report.json"), "cached": True}
    t0 = time.time()
    seen = [0]

    def captions() -> Iterator[Optional[str]]:
        for batch in metadata_batches(embed_dir / "metadata.parquet", ["caption"]):
            seen[0] += batch.num_rows
            yield from batch.column(0).to_pylist()

    vocab = build_vocabulary(captions(), cfg.curation.vocab_size, classes, cfg.curation.max_ngram)
    write_vocabulary(out_dir / "vocabulary.parquet", vocab, {"captions": seen[0]})
    rows = vocab.to_pylist()
    report = {
        "concepts": len(rows),
        "from_captions": sum(r["source"] == "captions" for r in rows),
        "benchmark_only": sum(r["source"] == "benchmark" for r in rows),
        "captions": seen[0],
        "top": ", ".join(f"{r['concept']} ({r['count']})" for r in rows[:15]),
        "seconds": round(time.time() - t0, 2),
    }
    write_json_atomic(out_dir / "report.json", report)
    write_manifest(out_dir, "vocabulary", inputs, fields, {"concepts": len(rows)})
    return {**report, "cached": False}


def run(ctx: Context) -> Report:
    """Why: the vocabulary from the embedded captions (the metadata is row-aligned with the embeddings)."""
    return vocabulary_stage(ctx.dir("embed"), ctx.dir("vocabulary"), ctx.cfg)


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: the expected key from the embed stage's expected key and today's class-name file."""
    needs = {k: v for k, v in up.items() if k in ("embed", "toyworld")}
    inputs = None
    if up["embed"].key:
        try:
            inputs = vocabulary_inputs_fp(up["embed"].key, benchmark_classes(cfg))
        except FileNotFoundError:
            inputs = None
    return compare("vocabulary", stage_dir(cfg, "vocabulary"), inputs, cfg.fields_for(FIELDS), needs,
                   "the embeddings or the benchmark classes changed")


STAGE = Stage("vocabulary", needs=("toyworld", "embed"), run=run, status=status, fields=tuple(FIELDS))
