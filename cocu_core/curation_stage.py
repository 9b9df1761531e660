"""The pipeline's curation stages over the embed/index outputs: vocabulary, concept embeddings,
one archive per download shard, and the semantic-gap report.

Each function is a resumable stage: it writes atomically, leaves a manifest, and returns at once
when the manifest matches its inputs fingerprint and the config fields it reads.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

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
    from cocu_core.concepts.corpus import metadata_batches
    from cocu_core.concepts.vocabulary import build_vocabulary, write_vocabulary

    classes = benchmark_classes(cfg)
    fields = cfg.fields_for(VOCAB_FIELDS)
    inputs = vocabulary_inputs_fp(_manifest_fp(embed_dir), classes)
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


def concept_embeddings_stage(vocab_dir: Path, out_dir: Path, cfg: PipelineConfig, encoder_id: str,
                             encode_text_fn: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, bool]:
    """Why: one text embedding per concept, cached per (vocabulary, encoder, templates)."""
    from cocu_core.concepts.embed import cached_concept_embeddings
    from cocu_core.concepts.vocabulary import read_vocabulary

    concepts = read_vocabulary(vocab_dir / "vocabulary.parquet").column("concept").to_pylist()
    return cached_concept_embeddings(out_dir, concepts, cfg.encoder.templates, encoder_id, encode_text_fn)


class CurationData:
    """Everything a shard's curation reads, row-aligned with the embed stage, as a handle on files.

    Why a handle: embeddings, caption concepts and keys stay memory-mapped (pages come from the files and
    the kernel may drop them), so memory is bounded by the batch, not the corpus; pickled, it is a few
    paths and the concept embeddings, so a shard task can run in another process or on another machine
    that sees the work folder. The whole-corpus lists (`keys`, `captions`, `sample_ids`, `shards`) are
    built on first use, for small corpora and the references."""

    def __init__(self, embed_dir: Path, corpus_dir: Path, concept_emb: np.ndarray, concepts: list[str]):
        from cocu_core.embed import shard_row_ranges

        self.embed_dir, self.corpus_dir = Path(embed_dir), Path(corpus_dir)
        self.concept_emb, self.concepts = concept_emb, list(concepts)
        self.shard_rows: dict[str, tuple[int, int]] = shard_row_ranges(self.embed_dir)
        m = read_manifest(self.corpus_dir) or {}
        self.n = int(m.get("counts", {}).get("rows", 0))
        self.checks: dict[str, Any] = m.get("checks", {})
        self._open: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_open"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open = {}

    def _get(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._open:
            self._open[name] = make()
        return self._open[name]

    def _embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        from cocu_core.embed import open_embeddings

        return self._get("emb", lambda: open_embeddings(self.embed_dir))

    def _corpus(self):
        from cocu_core.concepts.corpus import open_corpus

        return self._get("corpus", lambda: open_corpus(self.corpus_dir))

    @property
    def img_emb(self) -> np.ndarray:
        return self._embeddings()[0]

    @property
    def cap_emb(self) -> np.ndarray:
        return self._embeddings()[1]

    @property
    def offsets(self) -> np.ndarray:
        return self._corpus().offsets

    @property
    def ids(self) -> np.ndarray:
        return self._corpus().ids

    @property
    def key_array(self) -> pa.StringArray:
        """Why: every key, zero-copy over the mapped file; what `curate` takes neighbour keys from."""
        return self._corpus().keys

    @property
    def keys(self) -> list[str]:
        return self._get("keys", lambda: self.key_array.to_pylist())

    def _column(self, name: str) -> list:
        return pq.read_table(self.embed_dir / "metadata.parquet", columns=[name]).column(name).to_pylist()

    @property
    def captions(self) -> list[str]:
        return self._get("captions", lambda: [c or "" for c in self._column("caption")])

    @property
    def sample_ids(self) -> list[str]:
        def make() -> list[str]:
            names = pq.read_schema(self.embed_dir / "metadata.parquet").names
            return [str(s) for s in (self._column("sample_id") if "sample_id" in names else self.keys)]

        return self._get("sample_ids", make)

    @property
    def shards(self) -> np.ndarray:
        names = sorted(self.shard_rows)
        return np.repeat(np.asarray(names), [self.shard_rows[s][1] - self.shard_rows[s][0] for s in names])

    def rows_of(self, shard: str) -> np.ndarray:
        """Why: a shard's rows are one contiguous range of the key-sorted corpus."""
        if shard not in self.shard_rows:
            raise KeyError(f"shard {shard!r} has no embedded sample (shards: {', '.join(sorted(self.shard_rows))})")
        a, b = self.shard_rows[shard]
        return np.arange(a, b, dtype=np.int64)

    def captions_of(self, shard: str) -> list[str]:
        """Why: the captions of one shard only, read from the row groups that hold it."""
        from cocu_core.concepts.corpus import metadata_rows

        a, b = self.shard_rows[shard]
        t = metadata_rows(self.embed_dir / "metadata.parquet", a, b, ["caption"])
        return [c or "" for c in t.column("caption").to_pylist()]


CORPUS_FIELDS_VERSION = 1


def corpus_inputs_key(embed_dir: Path, vocab_dir: Path, max_ngram: int) -> str:
    """Why: the caption concepts depend on the embeddings' metadata, the vocabulary and the n-gram length."""
    from cocu_core.embed import embed_manifest

    vm = read_manifest(vocab_dir)
    if vm:
        vkey = vm["cache_key"]
    else:  # a vocabulary written outside the stage: identify it by its file
        st = (Path(vocab_dir) / "vocabulary.parquet").stat()
        vkey = fingerprint({"size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return fingerprint({"embed": embed_manifest(embed_dir)["cache_key"], "vocabulary": vkey, "max_ngram": max_ngram,
                        "version": CORPUS_FIELDS_VERSION})


def _embedding_checks(embed_dir: Path) -> dict[str, Any]:
    """Why: NaN/inf/zero embeddings found once per corpus (chunked over the mapped files), refused per variant."""
    from cocu_core.concepts.corpus import metadata_rows
    from cocu_core.curation.errors import bad_embedding_rows
    from cocu_core.embed import open_embeddings

    out: dict[str, Any] = {}
    for name, emb in zip(("image", "caption"), open_embeddings(embed_dir)):
        bad = bad_embedding_rows(emb)
        keys = [metadata_rows(embed_dir / "metadata.parquet", int(r), int(r) + 1, ["key"]).column(0)[0].as_py()
                for r in bad[:5]]
        out[name] = {"bad_rows": int(len(bad)), "bad_keys": keys}
    return out


def load_curation_data(embed_dir: Path, vocab_dir: Path, concept_emb: np.ndarray, max_ngram: int,
                       cache_dir: Optional[Path] = None) -> CurationData:
    """Why: join embeddings, metadata and extracted caption concepts into the curation inputs.

    The caption concepts and keys are extracted once per (embeddings, vocabulary, max_ngram) in one
    streaming pass into `cache_dir` (default `<workdir>/curation_inputs`) and memory-mapped from there."""
    from cocu_core.concepts.corpus import build_corpus
    from cocu_core.concepts.extract import ConceptExtractor
    from cocu_core.concepts.vocabulary import read_vocabulary
    from cocu_core.curation.errors import CurationInputError

    embed_dir, vocab_dir = Path(embed_dir), Path(vocab_dir)
    concepts = read_vocabulary(vocab_dir / "vocabulary.parquet").column("concept").to_pylist()
    concept_emb = np.ascontiguousarray(concept_emb, np.float32)
    if concept_emb.ndim != 2 or concept_emb.shape[0] != len(concepts):
        raise CurationInputError(f"concept embeddings have shape {concept_emb.shape}, expected ({len(concepts)}, d) "
                                 f"for the vocabulary in {vocab_dir}")
    key = corpus_inputs_key(embed_dir, vocab_dir, max_ngram)
    folder = Path(cache_dir or vocab_dir.parent / "curation_inputs") / key
    if not read_manifest(folder):
        extractor = ConceptExtractor(concepts, max_ngram)
        build_corpus(embed_dir / "metadata.parquet", folder, key, extractor.extract_many,
                     lambda: _embedding_checks(embed_dir))
    data = CurationData(embed_dir, folder, concept_emb, concepts)
    dim = data.img_emb.shape[1] if data.img_emb.ndim == 2 else 0
    if data.img_emb.shape[0] != data.n:
        raise CurationInputError(f"{embed_dir} holds {data.img_emb.shape[0]} embeddings but {folder} was built for "
                                 f"{data.n} rows; delete {folder} to rebuild it")
    if data.n and concept_emb.shape[1] != dim:
        raise CurationInputError(f"concept embeddings are {concept_emb.shape[1]}-d but the embeddings in {embed_dir} "
                                 f"are {dim}-d: they come from different encoders")
    badc = bad_concept_rows(concept_emb)
    if len(badc):
        raise CurationInputError("NaN, infinite or zero text embedding for concept(s) "
                                 + ", ".join(repr(concepts[int(i)]) for i in badc[:5]))
    return data


def bad_concept_rows(concept_emb: np.ndarray) -> np.ndarray:
    """Why: a broken concept embedding would silently zero its scores in every archive."""
    from cocu_core.curation.errors import bad_embedding_rows

    return bad_embedding_rows(concept_emb)


def shard_names(data: CurationData) -> list[str]:
    """Why: one archive (and one cached task) per download shard."""
    return sorted(data.shard_rows)


@lru_cache(maxsize=1)
def _blank_captions(n: int) -> list[str]:
    """Why: `curate` turns the whole caption list into an Arrow array but only keeps the query rows' captions,
    which the shard stage sets from the shard's metadata; a blank list keeps that cost to one pointer per row."""
    return [""] * n


@lru_cache(maxsize=8)
def _mapped_index(path: str, mtime_ns: int) -> Any:
    from cocu_core.index import load_index

    p = Path(path)
    return load_index(p.parent, p.name.removesuffix(".index"))


def resolve_index(ref: Any) -> Any:
    """Why: a shard task on another process or machine gets an index *path* (`<workdir>/index/image.index`) and
    memory-maps it once per process, instead of receiving a pickled copy of the whole index."""
    if isinstance(ref, (str, Path)):
        p = Path(ref)
        if not p.is_file():
            raise FileNotFoundError(f"no index at {p}; run the index stage first")
        return _mapped_index(str(p.resolve()), p.stat().st_mtime_ns)
    return ref


def _check_inputs(data: CurationData, variant: str, image_index, caption_index) -> None:
    """Why: refuse, before anything is written, embeddings the corpus checks found broken and indexes over
    other vectors (another encoder's width, another corpus's size)."""
    from cocu_core.curation.errors import CurationInputError
    from cocu_core.curation.variants import get_variant
    from cocu_core.index.build import check_index_shape

    expansion = get_variant(variant).expansion
    for name in ("image", "caption") if expansion == "language" else ("image",):
        c = data.checks.get(name, {})
        if c.get("bad_rows"):
            more = f" and {c['bad_rows'] - 5} more" if c["bad_rows"] > 5 else ""
            raise CurationInputError(f"NaN, infinite or zero {name} embedding for sample(s) "
                                     f"{', '.join(map(repr, c['bad_keys']))}{more}")
    index = {"vision": image_index, "language": caption_index}.get(expansion)
    if index is not None:
        check_index_shape(index, data.n, data.img_emb.shape[1], f"the {'image' if expansion == 'vision' else 'caption'} index")


def shard_inputs_fp(upstream_fp: str, shard: str) -> str:
    """Why: one shard archive's inputs key, shared with `cocu status`."""
    return fingerprint({"upstream": upstream_fp, "shard": shard})


def curate_shard_stage(data: CurationData, shard: str, out_dir: Path, cfg: PipelineConfig, upstream_fp: str,
                       encoder_id: str, image_index=None, caption_index=None,
                       variant: Optional[str] = None) -> dict[str, Any]:
    """Why: the archive of one shard; its rows are searched against the whole dataset's indexes.

    `image_index`/`caption_index`: faiss indexes, or paths to index files (memory-mapped once per process), or
    None (exact search over the embeddings, for small data)."""
    from cocu_core.curation import archive_metadata, curate, write_archive

    ccfg = cfg.curation if variant is None else cfg.curation.model_copy(update={"variant": variant})
    fields = cfg.model_copy(update={"curation": ccfg}).fields_for(CURATE_FIELDS)
    shard_dir = out_dir / f"shard_{shard}"
    inputs = shard_inputs_fp(upstream_fp, shard)
    if stage_is_current(shard_dir, inputs, fields):
        return {**read_manifest(shard_dir)["counts"], "shard": shard, "cached": True}
    image_index, caption_index = resolve_index(image_index), resolve_index(caption_index)
    _check_inputs(data, ccfg.variant, image_index, caption_index)
    t0 = time.time()
    rows = data.rows_of(shard)
    table = curate(data.key_array, _blank_captions(data.n), (data.offsets, data.ids), data.img_emb, data.cap_emb,
                   data.concept_emb, ccfg, image_index, caption_index, concept_names=data.concepts, query_rows=rows,
                   validate=False)
    col = table.schema.get_field_index("caption")
    table = table.set_column(col, table.schema.field(col), pa.array(data.captions_of(shard), pa.string()))
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
    """Why: a shard's archive depends on the embeddings, the vocabulary, the indexes and the encoder; indexes
    built over other embeddings (another encoder) are refused here, before any archive is written."""
    from cocu_core.index.build import check_index_dir

    check_index_dir(cfg.workpath / "index", cfg.workpath / "embed")
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
    """Why: the toy world's semantic-gap table, recomputed only when its inputs or fields change; beside it, what
    training sees per arm whose inputs exist (`training_signal/`, its own cache: training settings and archives)."""
    from cocu_core.evaluation.training_signal import training_signal_stage

    out = cfg.workpath / "reports" / "semantic_gap"
    fields = cfg.fields_for(GAP_FIELDS)
    inputs = gap_inputs_fp(curation_upstream_fp(cfg, encoder_id),
                           read_json(cfg.workpath / "toyworld" / "world.json")["fingerprint"])
    if stage_is_current(out, inputs, fields):
        rows, cached = read_json(out / "semantic_gap.json")["rows"], True
    else:
        gt, named = toy_ground_truth(cfg.workpath / "toyworld" / "train")
        rows, cached = semantic_gap_report(data, cfg, gt, named, image_index, caption_index), False
        write_json_atomic(out / "semantic_gap.json", {"rows": rows})
        write_manifest(out, "semantic_gap", inputs, fields, {"images": len(gt), "methods": len(rows)})
    training_signal_stage(cfg, out / "training_signal")
    return rows, cached


def archive_dir_for(cfg: PipelineConfig) -> Path:
    """Why: archives of different variants live side by side, so switching variant never overwrites."""
    return cfg.workpath / "curate" / cfg.curation.variant


def summarise_shards(results: Sequence[dict]) -> dict[str, Any]:
    """Why: one line of totals for the stage table artifact."""
    images = sum(r["images"] for r in results)
    secs = sum(r.get("seconds", 0) for r in results if not r.get("cached"))
    return {"shards": len(results), "images": images, "empty_archives": sum(r["empty_archives"] for r in results),
            "cached_shards": sum(bool(r.get("cached")) for r in results), "seconds": round(secs, 2)}
