"""curate: one Parquet concept archive per download shard (expansion, T2V ranking, clustering), plus the oracle arm's
ground-truth archive; the algorithm is in `cocu_core/curation/`.

Reads   embed/ (embeddings, metadata), vocabulary/, concept_emb/, index/ (their cache keys and files)
Writes  curate/<variant>/archive_NNNNN.parquet, curate/<variant>/shard_NNNNN/manifest.json (one per shard);
        curate/oracle/ (the oracle arm, toy world only)
Key     per shard: shard_inputs_fp(curation_upstream_key(embed, vocabulary, index keys, encoder), shard) + FIELDS

The fan-out is the one exception to the one face: `prepare(ctx)` loads the inputs and both indexes once,
`with_carry(prep, cfg)` adds the incremental plan, `run_shard(prep, shard, ctx)` curates one shard, `run(ctx)` loops
over them in order.

Incremental re-curation (`curation.incremental`, vision-driven variants): a shard curated before with the same
settings, encoder, embeddings generation and rows recomputes only the rows `cocu_core/curation/incremental.py` finds
changeable and carries the others over from its earlier archive; its manifest counts both and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cocu_core import __version__
from cocu_core.config import PipelineConfig, fingerprint
from cocu_core.index.build import check_index_dir, check_index_shape
from cocu_core.io import read_json, read_manifest, stage_is_current, write_manifest
from cocu_core.layout import stage_dir, toy_split
from cocu_core.stages.base import (DONE, MISSING, PARTIAL, STALE, Context, Report, Stage, StageStatus, compare,
                                   upstream_key)
from cocu_core.concepts.embed import embeddings_cache_key
from cocu_core.stages.concepts import load_concept_embeddings
from cocu_core.toyworld.oracle import (ORACLE_VARIANT, ORACLE_VERSION, OracleError, download_sample_ids,
                                       oracle_inputs_fp, oracle_table, toy_world_fingerprint)

if TYPE_CHECKING:
    from cocu_core.curation.data import CurationData

FIELDS = [
    "curation.variant", "curation.n_neighbours", "curation.k_sample", "curation.naive_sampling",
    "curation.batch_size", "curation.kmeans_iters", "curation.kmeans_restarts", "curation.seed",
    "curation.max_ngram", "encoder.templates", "curation.incremental", "curation.reverse_k",
]


@lru_cache(maxsize=1)
def _blank_captions(n: int) -> list[str]:
    """Why: `curate` turns the whole caption list into an Arrow array but only keeps the query rows' captions,
    which the shard stage sets from the shard's metadata; a blank list keeps that cost to one pointer per row."""
    return [""] * n


@lru_cache(maxsize=8)
def _mapped_index(path: str, mtime_ns: int) -> Any:
    """Why: one memory map per index file and modification time, per process."""
    from cocu_core.index import load_index  # faiss

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
    from cocu_core.curation.errors import CurationInputError  # torch, through the curation package
    from cocu_core.curation.variants import get_variant

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
                       variant: Optional[str] = None, carry: Optional["Carry"] = None) -> dict[str, Any]:
    """Why: the archive of one shard; its rows are searched against the whole dataset's indexes.

    `image_index`/`caption_index`: faiss indexes, or paths to index files (memory-mapped once per process), or
    None (exact search over the embeddings, for small data). `carry`: an incremental re-curation's plan; a shard it
    holds recomputes only its changed rows and carries the others over."""
    from cocu_core.curation import archive_metadata, curate, write_archive  # torch

    ccfg = cfg.curation if variant is None else cfg.curation.model_copy(update={"variant": variant})
    fields = cfg.model_copy(update={"curation": ccfg}).fields_for(FIELDS)
    shard_dir = out_dir / f"shard_{shard}"
    inputs = shard_inputs_fp(upstream_fp, shard)
    if stage_is_current(shard_dir, inputs, fields):
        return {**read_manifest(shard_dir)["counts"], "shard": shard, "cached": True}
    image_index, caption_index = resolve_index(image_index), resolve_index(caption_index)
    _check_inputs(data, ccfg.variant, image_index, caption_index)
    t0 = time.time()
    rows = data.rows_of(shard)
    earlier = carry.shard_plan(data, shard, out_dir) if carry is not None and shard in carry.shards else None
    query = rows if earlier is None else rows[earlier["recompute"]]
    table = curate(data.key_array, _blank_captions(data.n), (data.offsets, data.ids), data.img_emb, data.cap_emb,
                   data.concept_emb, ccfg, image_index, caption_index, concept_names=data.concepts, query_rows=query,
                   validate=False)
    if earlier is not None:
        table = merge_carried(table, query, earlier["carried"], rows[~earlier["recompute"]])
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
              "seconds": round(dt, 3), "images_per_s": round(len(rows) / dt, 1) if dt > 0 else None,
              "recomputed": int(len(query)), "carried": int(len(rows) - len(query)),
              **(earlier["why"] if earlier is not None else {"new_neighbour": 0, "concepts_changed": 0})}
    record = {"encoder": encoder_id, "algorithm": _algorithm(), "part_key": embed_part_key(data),
              "rows": [int(rows[0]), int(rows[-1]) + 1] if len(rows) else [0, 0],
              "concept_emb": concept_file_name(data.concepts, cfg, encoder_id)}
    write_manifest(shard_dir, "curate", inputs, fields, counts, {"variant": ccfg.variant, "incremental": record})
    return {**counts, "shard": shard, "cached": False}


def _algorithm() -> int:
    from cocu_core.curation.archive import ALGORITHM_VERSION  # torch, through the curation package

    return ALGORITHM_VERSION


def embed_part_key(data: CurationData) -> Optional[str]:
    """Why: the embeddings generation (download generation + encoder + fields) a shard's rows were embedded in."""
    return (read_manifest(data.embed_dir) or {}).get("part_key")


def concept_file_name(concepts: Sequence[str], cfg: PipelineConfig, encoder_id: str) -> str:
    """Why: the name of today's concept embedding file (kept beside later ones in concept_emb/), so a later
    re-curation can tell which concepts embed differently."""
    return f"concept_emb_{embeddings_cache_key(list(concepts), encoder_id, cfg.encoder.templates)}.npy"


def merge_carried(fresh: pa.Table, fresh_rows: np.ndarray, kept: pa.Table, kept_rows: np.ndarray) -> pa.Table:
    """Why: recomputed and carried rows back in the shard's row order."""
    both = pa.concat_tables([fresh, kept.cast(fresh.schema)])
    order = np.argsort(np.concatenate([fresh_rows, kept_rows]), kind="stable")
    return both.take(pa.array(order, pa.int64()))


@dataclass
class Carry:
    """An incremental re-curation's plan, made once before any shard: which earlier shards can carry rows over, and
    per row (over the whole corpus) the reasons found so far to recompute it."""

    shards: dict[str, dict]  # shard -> its earlier manifest (same settings, encoder, rows and embeddings)
    old_map: np.ndarray  # earlier concept id -> today's (-1: dropped)
    joined: np.ndarray  # [n] a new image now reaches the row's N nearest
    own_changed: np.ndarray  # [n] an archive concept dropped or embeds differently, or a tie flips order
    caption_changed: np.ndarray  # [n] the caption's concepts differ today (True for rows not curated earlier)
    n_neighbours: int

    def shard_plan(self, data: CurationData, shard: str, out_dir: Path) -> dict[str, Any]:
        """Why: one earlier shard's rows to recompute (and why), and its earlier archive rows that are kept."""
        from cocu_core.curation.archive import ARCHIVE_SCHEMA  # torch, through the curation package
        from cocu_core.curation.incremental import carried, list_offsets, neighbour_rows  # torch (curation package)

        rows = data.rows_of(shard)
        old = pq.read_table(out_dir / f"archive_{shard}.parquet", schema=ARCHIVE_SCHEMA)
        nb = neighbour_rows(old.column("neighbour_keys"), data.key_array, self.n_neighbours)
        lost = (nb >= 0).sum(axis=1) != np.diff(list_offsets(old.column("neighbour_keys"))[0])
        members = (self.caption_changed[np.clip(nb, 0, None)] & (nb >= 0)).any(axis=1) | self.caption_changed[rows]
        joined = self.joined[rows]
        other = self.own_changed[rows] | members | lost
        recompute = joined | other
        keep = np.flatnonzero(~recompute)
        kept = carried(old, keep, self.old_map, data.offsets, data.ids, rows[keep])
        return {"recompute": recompute, "carried": kept,
                "why": {"new_neighbour": int(joined.sum()), "concepts_changed": int((other & ~joined).sum())}}


def plan_carry(cfg: PipelineConfig, data: CurationData, indexes: Mapping[str, Any], encoder_id: str,
               log=None) -> Optional[Carry]:
    """Why: before any shard, the earlier shards whose rows may be carried over, and every earlier row's reasons to
    be recomputed that need the whole corpus (a new image among its nearest, changed captions and concepts).
    None: nothing to carry (`curation.incremental` off, another expansion, no earlier archive of these settings)."""
    from cocu_core.curation.archive import ARCHIVE_SCHEMA  # torch, through the curation package
    from cocu_core.curation.incremental import (caption_changed, concepts_changed, id_mapping,  # torch (curation)
                                                joined_by_new, list_offsets, neighbour_rows, nth_similarity,
                                                ties_reordered)
    from cocu_core.curation.variants import get_variant  # torch, through the curation package

    ccfg = cfg.curation
    variant = get_variant(ccfg.variant)
    if not ccfg.incremental or variant.expansion != "vision":
        return None
    folder, fields = stage_dir(cfg, "curate"), cfg.fields_for(FIELDS)
    part_key, algo = embed_part_key(data), _algorithm()
    shards: dict[str, dict] = {}
    for shard, (a, b) in sorted(data.shard_rows.items()):
        m = read_manifest(folder / f"shard_{shard}")
        rec = (m or {}).get("incremental") or {}
        if not m or m.get("config_fields") != fields or rec.get("encoder") != encoder_id or \
                rec.get("algorithm") != algo or not part_key or rec.get("part_key") != part_key or \
                list(rec.get("rows") or []) != [a, b] or not (folder / f"archive_{shard}.parquet").is_file():
            continue
        shards[shard] = m
    files = {m["incremental"].get("concept_emb") for m in shards.values()}
    if len(files) > 1:  # curated against other vocabularies: keep the shards of the latest one only
        latest = max(shards.values(), key=lambda m: m.get("finished_at", ""))["incremental"]["concept_emb"]
        shards = {s: m for s, m in shards.items() if m["incremental"]["concept_emb"] == latest}
    if not shards:
        return None
    def columns(s: str, names: list[str]) -> pa.Table:
        t = pq.read_table(folder / f"archive_{s}.parquet", schema=ARCHIVE_SCHEMA, columns=names)
        a, b = data.shard_rows[s]
        if t.num_rows != b - a:
            raise ValueError(f"{folder}/archive_{s}.parquet holds {t.num_rows} rows, its manifest says {b - a}")
        return t

    maps = []
    for s in shards:  # one shard's (id, name) lists at a time: memory is one shard's
        t = columns(s, ["concept_ids", "concepts"])
        maps.append(id_mapping(t.column("concept_ids"), t.column("concepts"), data.concepts))
    old_map = np.full(max((len(m) for m in maps), default=0), -1, np.int64)
    for m in maps:
        old_map[:len(m)] = np.maximum(old_map[:len(m)], m)
    old_file = stage_dir(cfg, "concepts") / next(iter(shards.values()))["incremental"]["concept_emb"]
    old_emb = np.load(old_file, mmap_mode="r") if old_file.is_file() else None
    changed_ids = concepts_changed(old_map, old_emb, data.concept_emb)
    n = data.n
    old_rows = np.sort(np.concatenate([data.rows_of(s) for s in shards]))
    is_old = np.zeros(n, bool)
    is_old[old_rows] = True
    thr = np.full(n, -np.inf, np.float32)
    cap = np.ones(n, bool)
    own = np.zeros(n, bool)
    score = "t2v_scores" if variant.ranking == "t2v" else "naive_scores"
    for s in shards:
        t = columns(s, ["caption_concept_ids", "concept_ids", "naive_scores", "t2v_scores", "neighbour_keys"])
        rows = data.rows_of(s)
        nb = neighbour_rows(t.column("neighbour_keys"), data.key_array, ccfg.n_neighbours)
        thr[rows] = nth_similarity(data.img_emb, rows, nb, ccfg.n_neighbours)
        cap[rows] = caption_changed(t.column("caption_concept_ids"), old_map, data.offsets, data.ids, rows)
        off, flat = list_offsets(t.column("concept_ids"))
        ids = flat.to_numpy(zero_copy_only=False).astype(np.int64)
        bad = changed_ids[np.clip(ids, 0, len(changed_ids) - 1)] if len(changed_ids) else np.zeros(len(ids), bool)
        per_row = np.zeros(len(rows), bool)
        per_row[np.repeat(np.arange(len(rows)), np.diff(off))[bad]] = True
        own[rows] = per_row | ties_reordered(t.column("concept_ids"), t.column(score), old_map)
    infos = stage_dir(cfg, "index") / "image_infos.json"
    exact = infos.is_file() and read_json(infos).get("index_param") is None  # only exact search needs no parameter
    index = None if exact else resolve_index(indexes["image"])
    reverse_k = ccfg.reverse_k or 4 * ccfg.n_neighbours
    joined = np.zeros(n, bool)
    joined[old_rows] = joined_by_new(data.img_emb, thr[old_rows], old_rows, np.flatnonzero(~is_old), index, reverse_k)
    if log:
        log(f"curate: incremental over {len(shards)} earlier shards ({len(old_rows):,} rows, {n - len(old_rows):,} new; "
            f"{'exact search' if exact else f'{reverse_k} nearest per new image'}); {int(joined.sum()):,} earlier rows "
            f"gain a new neighbour, {int(changed_ids.sum())} concepts changed")
    return Carry(shards, old_map, joined, own, cap, ccfg.n_neighbours)


def curation_upstream_fp(cfg: PipelineConfig, encoder_id: str) -> str:
    """Why: a shard's archive depends on the embeddings, the vocabulary, the indexes and the encoder; indexes
    built over other embeddings (another encoder) are refused here, before any archive is written."""
    check_index_dir(stage_dir(cfg, "index"), stage_dir(cfg, "embed"))
    return curation_upstream_key({d: upstream_key(stage_dir(cfg, d)) for d in ("embed", "vocabulary", "index")},
                                 encoder_id)


def curation_upstream_key(stage_keys: dict[str, str], encoder_id: str) -> str:
    """Why: the curation upstream key from the embed/vocabulary/index cache keys, shared with `cocu status`."""
    from cocu_core.curation.archive import ALGORITHM_VERSION  # torch, through the curation package

    return fingerprint({"upstream": {d: stage_keys[d] for d in ("embed", "vocabulary", "index")},
                        "encoder": encoder_id, "algorithm": ALGORITHM_VERSION})


def summarise_shards(results: Sequence[dict]) -> dict[str, Any]:
    """Why: one line of totals for the stage table artifact; the stage is cached when every shard was."""
    images = sum(r["images"] for r in results)
    secs = sum(r.get("seconds", 0) for r in results if not r.get("cached"))
    fresh = [r for r in results if not r.get("cached")]
    return {"shards": len(results), "images": images, "empty_archives": sum(r["empty_archives"] for r in results),
            "cached_shards": sum(bool(r.get("cached")) for r in results), "seconds": round(secs, 2),
            "cached": all(r.get("cached") for r in results),
            **{k: sum(int(r[k]) for r in fresh) for k in ("recomputed", "carried", "new_neighbour", "concepts_changed")}}


@dataclass
class Prepared:
    """What every shard of a curation run shares, loaded once: the inputs handle, both indexes, the encoder."""

    data: CurationData
    indexes: dict[str, Any]
    encoder_id: str
    carry: Optional[Carry] = None


def load_inputs(cfg: PipelineConfig) -> tuple[CurationData, str]:
    """Why: embeddings, metadata and each caption's extracted concepts, joined once for every shard."""
    from cocu_core.curation.data import load_curation_data  # torch, through the curation package

    emb, encoder_id = load_concept_embeddings(cfg)
    data = load_curation_data(stage_dir(cfg, "embed"), stage_dir(cfg, "vocabulary"), emb, cfg.curation.max_ngram)
    return data, encoder_id


def load_indexes(cfg: PipelineConfig) -> dict[str, Any]:
    """Why: the image and caption FAISS indexes with the search parameters the index stage tuned to its recall target."""
    from cocu_core.index import load_index  # faiss

    return {name: load_index(stage_dir(cfg, "index"), name) for name in ("image", "caption")}


def prepare(ctx: Context) -> Prepared:
    """Why: the fan-out's shared inputs; the flow loads them as two tasks and builds the same object."""
    data, encoder_id = load_inputs(ctx.cfg)
    return Prepared(data, load_indexes(ctx.cfg), encoder_id)


def with_carry(prep: Prepared, cfg: PipelineConfig, log=None) -> Prepared:
    """Why: the shared inputs plus the incremental plan (made once, before any shard; None when nothing carries)."""
    return Prepared(prep.data, prep.indexes, prep.encoder_id, plan_carry(cfg, prep.data, prep.indexes, prep.encoder_id,
                                                                         log))


def run_shard(prep: Prepared, shard: str, ctx: Context) -> Report:
    """Why: one shard's archive (cached per shard), the unit the flow fans out."""
    cfg = ctx.cfg
    return curate_shard_stage(prep.data, shard, ctx.dir("curate"), cfg, curation_upstream_fp(cfg, prep.encoder_id),
                              prep.encoder_id, prep.indexes["image"], prep.indexes["caption"], carry=prep.carry)


def run(ctx: Context, prep: Optional[Prepared] = None) -> Report:
    """Why: every shard in order (the flow runs them concurrently instead, through `run_shard`)."""
    from cocu_core.curation.data import shard_names  # torch, through the curation package

    prep = with_carry(prep or prepare(ctx), ctx.cfg, ctx.log)
    results = [run_shard(prep, s, ctx) for s in shard_names(prep.data)]
    return {**summarise_shards(results), "per_shard": results}


def oracle_archive(cfg: PipelineConfig) -> Path:
    """Why: the oracle arm trains on ground truth through the same archive reader as every curated variant;
    cached on (toy world, download) and written atomically, manifest last."""
    from cocu_core.curation.archive import ALGORITHM_VERSION, archive_files, write_archive  # torch (curation package)

    out = stage_dir(cfg, "curate", ORACLE_VARIANT)
    inputs = oracle_inputs_fp(cfg)
    if stage_is_current(out, inputs, {}):
        return out
    (out / "manifest.json").unlink(missing_ok=True)
    samples = download_sample_ids(stage_dir(cfg, "download"))
    pairs = pq.read_table(toy_split(cfg, "train") / "pairs.parquet", columns=["key", "concepts", "named"])
    table = oracle_table(samples, pairs)
    if table.num_rows == 0:
        raise OracleError(f"none of the {samples.num_rows} downloaded samples in {stage_dir(cfg, 'download')} "
                          f"(e.g. sample ids {samples.column('sample_id').slice(0, 3).to_pylist()}) is a pair of the "
                          f"toy world's train split: the download is not of this toy world")
    meta: dict[str, Any] = {"code_version": f"{__version__}+curation{ALGORITHM_VERSION}+oracle{ORACLE_VERSION}",
                            "encoder": "", "vocabulary": "toy classes", "variant": ORACLE_VARIANT,
                            "config": {"source": "toy world ground truth", "toyworld": toy_world_fingerprint(cfg)}}
    shard_col = table.column("shard")
    shards = pc.unique(shard_col).to_pylist()
    for shard in shards:
        part = table.filter(pc.equal(shard_col, shard)).drop_columns(["shard"])
        write_archive(out / f"archive_{shard}.parquet", part, meta)
    keep = {f"archive_{s}.parquet" for s in shards}
    for stale in archive_files(out):
        if stale.name not in keep:
            stale.unlink()
    sizes = pc.list_value_length(table.column("concepts")).to_numpy(zero_copy_only=False)
    counts = {"images": table.num_rows, "shards": len(shards), "downloaded": samples.num_rows,
              "no_ground_truth": samples.num_rows - table.num_rows, "mean_archive_size": round(float(sizes.mean()), 3)}
    write_manifest(out, "oracle", inputs, {}, counts, {"variant": ORACLE_VARIANT})
    return out


def expected_upstream_key(up: Mapping[str, StageStatus]) -> Optional[str]:
    """Why: the curation upstream key from the expected embed/vocabulary/index keys, shared with semantic_gap."""
    keys = {d: up[d].key for d in ("embed", "vocabulary", "index")}
    if not all(keys.values()) or not up["encoder"].key:
        return None
    return curation_upstream_key(keys, up["encoder"].key)  # type: ignore[arg-type]


def status(cfg: PipelineConfig, up: Mapping[str, StageStatus]) -> StageStatus:
    """Why: every shard's archive against its expected key; done when all are, else how many are not and why."""
    folder = stage_dir(cfg, "curate")
    fields = cfg.fields_for(FIELDS)
    needs = {k: up[k] for k in ("embed", "vocabulary", "index", "concepts")}
    upstream = expected_upstream_key(up)
    meta = stage_dir(cfg, "embed") / "metadata.parquet"
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


STAGE = Stage("curate", needs=("embed", "index", "vocabulary", "concepts"), run=run, status=status, fields=tuple(FIELDS))
