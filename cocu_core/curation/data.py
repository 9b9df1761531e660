"""The curation inputs as one handle on files: embeddings, metadata and each caption's extracted concepts,
row-aligned with the embed stage, memory-mapped, and checked before any archive is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.concepts.corpus import build_corpus, metadata_rows, open_corpus
from cocu_core.config import fingerprint
from cocu_core.curation.errors import CurationInputError, bad_embedding_rows
from cocu_core.embeddings.store import embed_manifest, open_embeddings, shard_row_ranges
from cocu_core.io import read_manifest


class CurationData:
    """Everything a shard's curation reads, row-aligned with the embed stage, as a handle on files.

    Why a handle: embeddings, caption concepts and keys stay memory-mapped (pages come from the files and
    the kernel may drop them), so memory is bounded by the batch, not the corpus; pickled, it is a few
    paths and the concept embeddings, so a shard task can run in another process or on another machine
    that sees the work folder. The whole-corpus lists (`keys`, `captions`, `sample_ids`, `shards`) are
    built on first use, for small corpora and the references."""

    def __init__(self, embed_dir: Path, corpus_dir: Path, concept_emb: np.ndarray, concepts: list[str]):
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
        return self._get("emb", lambda: open_embeddings(self.embed_dir))

    def _corpus(self):
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
        a, b = self.shard_rows[shard]
        t = metadata_rows(self.embed_dir / "metadata.parquet", a, b, ["caption"])
        return [c or "" for c in t.column("caption").to_pylist()]


CORPUS_FIELDS_VERSION = 1


def corpus_inputs_key(embed_dir: Path, vocab_dir: Path, max_ngram: int) -> str:
    """Why: the caption concepts depend on the embeddings' metadata, the vocabulary and the n-gram length."""
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
    from cocu_core.concepts.extract import ConceptExtractor
    from cocu_core.concepts.vocabulary import read_vocabulary

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
    return bad_embedding_rows(concept_emb)


def shard_names(data: CurationData) -> list[str]:
    """Why: one archive (and one cached task) per download shard."""
    return sorted(data.shard_rows)


