"""The pipeline's curation stages over the embed/index outputs: vocabulary, concept embeddings,
one archive per download shard, and the semantic-gap report.

Each function is a resumable stage: it writes atomically, leaves a manifest, and returns at once
when the manifest matches its inputs fingerprint and the config fields it reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.io import read_json, read_manifest, stage_is_current, write_json_atomic, write_manifest

VOCAB_FIELDS = ["curation.vocab_size", "curation.max_ngram"]
CONCEPT_EMB_FIELDS = ["encoder.templates"]
CURATE_FIELDS = [
    "curation.variant", "curation.n_neighbours", "curation.k_sample", "curation.naive_sampling",
    "curation.batch_size", "curation.kmeans_iters", "curation.kmeans_restarts", "curation.seed",
    "curation.max_ngram", "encoder.templates",
]


def _manifest_fp(stage_dir: Path) -> str:
    m = read_manifest(stage_dir)
    if not m:
        raise FileNotFoundError(f"no finished stage in {stage_dir}; run the earlier stages first")
    return m["cache_key"]


def benchmark_classes(cfg: PipelineConfig) -> list[str]:
    """Why: every evaluation class must be a possible concept; read from the benchmark's class file."""
    if cfg.eval.class_names:
        path = Path(cfg.eval.class_names)
    elif cfg.eval.voc_root:
        path = Path(cfg.eval.voc_root) / "class_names.txt"
    else:
        path = cfg.workpath / "toyworld" / "val" / "class_names.txt"
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
    fields = cfg.fields_for(VOCAB_FIELDS)
    inputs = vocabulary_inputs_fp(_manifest_fp(embed_dir), classes)
    if stage_is_current(out_dir, inputs, fields):
        return {**read_json(out_dir / "report.json"), "cached": True}
    t0 = time.time()
    captions = pq.read_table(embed_dir / "metadata.parquet", columns=["caption"]).column("caption").to_pylist()
    vocab = build_vocabulary(captions, cfg.curation.vocab_size, classes, cfg.curation.max_ngram)
    write_vocabulary(out_dir / "vocabulary.parquet", vocab, {"captions": len(captions)})
    rows = vocab.to_pylist()
    report = {
        "concepts": len(rows),
        "from_captions": sum(r["source"] == "captions" for r in rows),
        "benchmark_only": sum(r["source"] == "benchmark" for r in rows),
        "captions": len(captions),
        "top": ", ".join(f"{r['concept']} ({r['count']})" for r in rows[:15]),
        "seconds": round(time.time() - t0, 2),
    }
    write_json_atomic(out_dir / "report.json", report)
    write_manifest(out_dir, "vocabulary", inputs, fields, {"concepts": len(rows)})
    return {**report, "cached": False}


def concept_embeddings_stage(vocab_dir: Path, out_dir: Path, cfg: PipelineConfig, encoder_id: str,
                             encode_text_fn: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Why: one text embedding per concept, cached per (vocabulary, encoder, templates)."""
    from cocu_core.concepts.embed import cached_concept_embeddings
    from cocu_core.concepts.vocabulary import read_vocabulary

    concepts = read_vocabulary(vocab_dir / "vocabulary.parquet").column("concept").to_pylist()
    return cached_concept_embeddings(out_dir, concepts, cfg.encoder.templates, encoder_id, encode_text_fn)


@dataclass
class CurationData:
    """Everything a shard's curation reads, loaded once: row-aligned with the embed stage."""

    keys: list[str]
    sample_ids: list[str]
    captions: list[str]
    shards: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    img_emb: np.ndarray
    cap_emb: np.ndarray
    concept_emb: np.ndarray
    concepts: list[str]


def load_curation_data(embed_dir: Path, vocab_dir: Path, concept_emb: np.ndarray, max_ngram: int) -> CurationData:
    """Why: join embeddings, metadata and extracted caption concepts into the curation inputs."""
    from cocu_core.concepts.extract import ConceptExtractor
    from cocu_core.concepts.vocabulary import read_vocabulary
    from cocu_core.embed import load_embeddings

    img, txt, meta = load_embeddings(embed_dir)
    concepts = read_vocabulary(vocab_dir / "vocabulary.parquet").column("concept").to_pylist()
    captions = [c or "" for c in meta.column("caption").to_pylist()]
    offsets, ids = ConceptExtractor(concepts, max_ngram).extract_many(captions)
    sample_ids = meta.column("sample_id").to_pylist() if "sample_id" in meta.column_names else meta.column("key").to_pylist()
    return CurationData(
        keys=meta.column("key").to_pylist(), sample_ids=[str(s) for s in sample_ids], captions=captions,
        shards=np.asarray(meta.column("shard").to_pylist()), offsets=offsets, ids=ids,
        img_emb=np.ascontiguousarray(img, np.float32), cap_emb=np.ascontiguousarray(txt, np.float32),
        concept_emb=concept_emb, concepts=concepts,
    )


def shard_names(data: CurationData) -> list[str]:
    """Why: one archive (and one cached task) per download shard."""
    return [str(s) for s in sorted(set(data.shards.tolist()))]


def shard_inputs_fp(upstream_fp: str, shard: str) -> str:
    """Why: one shard archive's inputs key, shared with `cocu status`."""
    return fingerprint({"upstream": upstream_fp, "shard": shard})


def curate_shard_stage(data: CurationData, shard: str, out_dir: Path, cfg: PipelineConfig, upstream_fp: str,
                       encoder_id: str, image_index=None, caption_index=None,
                       variant: Optional[str] = None) -> dict[str, Any]:
    """Why: the archive of one shard; its rows are searched against the whole dataset's indexes."""
    from cocu_core.curation import archive_metadata, curate, write_archive

    ccfg = cfg.curation if variant is None else cfg.curation.model_copy(update={"variant": variant})
    fields = cfg.model_copy(update={"curation": ccfg}).fields_for(CURATE_FIELDS)
    shard_dir = out_dir / f"shard_{shard}"
    inputs = shard_inputs_fp(upstream_fp, shard)
    if stage_is_current(shard_dir, inputs, fields):
        return {**read_manifest(shard_dir)["counts"], "shard": shard, "cached": True}
    t0 = time.time()
    rows = np.flatnonzero(data.shards.astype(str) == shard)
    table = curate(data.keys, data.captions, (data.offsets, data.ids), data.img_emb, data.cap_emb, data.concept_emb,
                   ccfg, image_index, caption_index, concept_names=data.concepts, query_rows=rows)
    meta = archive_metadata(ccfg, encoder_id)
    meta["k_sample"] = ccfg.k_sample
    meta["naive_sampling"] = ccfg.naive_sampling
    write_archive(out_dir / f"archive_{shard}.parquet", table, meta)
    n_concepts = pa.compute.list_value_length(table.column("concepts")).to_numpy(zero_copy_only=False)
    dt = time.time() - t0
    counts = {"images": int(len(rows)), "empty_archives": int((n_concepts == 0).sum()),
              "mean_archive_size": float(n_concepts.mean()) if len(n_concepts) else 0.0,
              "seconds": round(dt, 3), "images_per_s": round(len(rows) / dt, 1) if dt > 0 else None}
    write_manifest(shard_dir, "curate", inputs, fields, counts, {"variant": ccfg.variant})
    return {**counts, "shard": shard, "cached": False}


def ranked_concepts(table: pa.Table, ranking: str) -> list[list[str]]:
    """Why: reorder each archive by naive or T2V score so one curation run scores both rankings."""
    col = "t2v_scores" if ranking == "t2v" else "naive_scores"
    out = []
    for names, scores, ids in zip(table.column("concepts").to_pylist(), table.column(col).to_pylist(),
                                  table.column("concept_ids").to_pylist()):
        order = sorted(range(len(names)), key=lambda i: (-scores[i], ids[i]))
        out.append([names[i] for i in order])
    return out


GAP_METHODS: tuple[tuple[str, str, str], ...] = (
    ("caption only", "baseline", "naive"),
    ("language-driven + naive", "v1", "naive"),
    ("language-driven + T2V", "v1", "t2v"),
    ("vision-driven + naive", "v2", "naive"),
    ("vision-driven + T2V", "v2", "t2v"),
)


def semantic_gap_report(data: CurationData, cfg: PipelineConfig, ground_truth: dict[str, list[str]],
                        named: dict[str, list[str]], image_index=None, caption_index=None,
                        k: int = 3, to_class: Optional[Callable[[str], Optional[str]]] = None) -> dict[str, dict]:
    """Why: P/R of the top-k archive concepts vs ground truth for each expansion x ranking method."""
    from cocu_core.curation import curate
    from cocu_core.evaluation.semantic_gap import gap_scores
    from cocu_core.toyworld.concepts import LEMMA_TO_CONCEPT

    to_class = to_class or LEMMA_TO_CONCEPT.get
    rows = np.flatnonzero(np.array([s in ground_truth for s in data.sample_ids]))
    gt = [ground_truth[data.sample_ids[i]] for i in rows]
    cap = [named[data.sample_ids[i]] for i in rows]
    tables: dict[str, pa.Table] = {}
    out: dict[str, dict] = {}
    for name, variant, ranking in GAP_METHODS:
        if variant not in tables:
            ccfg = cfg.curation.model_copy(update={"variant": variant})
            tables[variant] = curate(data.keys, data.captions, (data.offsets, data.ids), data.img_emb, data.cap_emb,
                                     data.concept_emb, ccfg, image_index, caption_index,
                                     concept_names=data.concepts, query_rows=rows)
        out[name] = gap_scores(ranked_concepts(tables[variant], ranking), gt, cap, to_class, k)
    return out


def toy_ground_truth(toy_split_dir: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Why: the toy world's per-image concepts and the concepts its caption names, by sample id."""
    t = pq.read_table(toy_split_dir / "pairs.parquet", columns=["key", "concepts", "named"])
    keys = t.column("key").to_pylist()
    return dict(zip(keys, t.column("concepts").to_pylist())), dict(zip(keys, t.column("named").to_pylist()))


def examples_markdown(archive_dir: Path, toy_split_dir: Path, data: CurationData, n: int = 6,
                      top: int = 5) -> str:
    """Why: a few toy images with caption, ground truth and top curated concepts, for the Prefect UI."""
    import base64

    gt, _ = toy_ground_truth(toy_split_dir)
    files = dict(zip(*[pq.read_table(toy_split_dir / "pairs.parquet", columns=["key", "file"]).column(c).to_pylist()
                       for c in ("key", "file")]))
    archives = sorted(archive_dir.glob("archive_*.parquet"))
    if not archives:
        return "_no archives_"
    table = pq.read_table(archives[0]).slice(0, n)
    key_to_sid = dict(zip(data.keys, data.sample_ids))
    lines = ["| image | caption | ground truth | top curated concepts |", "|---|---|---|---|"]
    for r in table.to_pylist():
        sid = key_to_sid.get(r["key"], r["key"])
        img = ""
        if sid in files and (toy_split_dir / files[sid]).is_file():
            b64 = base64.b64encode((toy_split_dir / files[sid]).read_bytes()).decode()
            img = f"![{sid}](data:image/jpeg;base64,{b64})"
        lines.append(f"| {img} | {r['caption']} | {', '.join(gt.get(sid, []))} | {', '.join(r['concepts'][:top])} |")
    return "\n".join(lines)


def curation_upstream_fp(cfg: PipelineConfig, encoder_id: str) -> str:
    """Why: a shard's archive depends on the embeddings, the vocabulary, the indexes and the encoder."""
    return curation_upstream_key({d: _manifest_fp(cfg.workpath / d) for d in ("embed", "vocabulary", "index")},
                                 encoder_id)


def curation_upstream_key(stage_keys: dict[str, str], encoder_id: str) -> str:
    """Why: the curation upstream key from the embed/vocabulary/index cache keys, shared with `cocu status`."""
    from cocu_core.curation.archive import ALGORITHM_VERSION

    return fingerprint({"upstream": {d: stage_keys[d] for d in ("embed", "vocabulary", "index")},
                        "encoder": encoder_id, "algorithm": ALGORITHM_VERSION})


GAP_FIELDS = ["curation.n_neighbours", "curation.max_ngram", "encoder.templates"]


def gap_inputs_fp(upstream_fp: str, world_fp: str) -> str:
    """Why: the semantic-gap report's inputs key, shared with `cocu status`."""
    return fingerprint({"upstream": upstream_fp, "toyworld": world_fp})


def gap_report_stage(data: CurationData, cfg: PipelineConfig, encoder_id: str, image_index=None,
                     caption_index=None) -> tuple[dict[str, dict], bool]:
    """Why: the toy world's semantic-gap table, recomputed only when its inputs or fields change."""
    out = cfg.workpath / "reports" / "semantic_gap"
    fields = cfg.fields_for(GAP_FIELDS)
    inputs = gap_inputs_fp(curation_upstream_fp(cfg, encoder_id),
                           read_json(cfg.workpath / "toyworld" / "world.json")["fingerprint"])
    if stage_is_current(out, inputs, fields):
        return read_json(out / "semantic_gap.json")["rows"], True
    gt, named = toy_ground_truth(cfg.workpath / "toyworld" / "train")
    rows = semantic_gap_report(data, cfg, gt, named, image_index, caption_index)
    write_json_atomic(out / "semantic_gap.json", {"rows": rows})
    write_manifest(out, "semantic_gap", inputs, fields, {"images": len(gt), "methods": len(rows)})
    return rows, False


def archive_dir_for(cfg: PipelineConfig) -> Path:
    """Why: archives of different variants live side by side, so switching variant never overwrites."""
    return cfg.workpath / "curate" / cfg.curation.variant


def summarise_shards(results: Sequence[dict]) -> dict[str, Any]:
    """Why: one line of totals for the stage table artifact."""
    images = sum(r["images"] for r in results)
    secs = sum(r.get("seconds", 0) for r in results if not r.get("cached"))
    return {"shards": len(results), "images": images, "empty_archives": sum(r["empty_archives"] for r in results),
            "cached_shards": sum(bool(r.get("cached")) for r in results), "seconds": round(secs, 2)}
