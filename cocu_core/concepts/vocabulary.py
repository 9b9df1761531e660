"""The concept vocabulary: physical nouns and noun phrases found in captions, ranked by frequency.

A candidate is a lemmatised n-gram (1..max_ngram words) whose last word textblob's offline Pattern
tagger marks as a noun and which WordNet knows as a noun of a physical kind (see
``text.is_physical_noun``); multi-word candidates must be WordNet compounds ("ice cream", "teddy
bear") that do not start with an adjective ("black kite" is a bird), matched longest first. Words that frame a caption rather than name its content ("photo",
"picture", "view", ...) are dropped. Counts are caption frequencies (a concept counts once per
caption). The top-K by count are kept, then the evaluation class names are appended so every
benchmark class is a possible concept.

Tie order (it decides concept ids, hence archives and every later cache key): count descending, then the
concept string ascending by code point (Python's ``str`` order), so equal counts rank "car" before "dog" and the
top-K cut keeps the alphabetically first of a tie; neither the caption order nor the hash seed plays a part.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cocu_core.concepts.text import is_physical_noun, normalise, singular, tokenize, wordnet
from cocu_core.errors import CocuError
from cocu_core.io import parquet_schema_version, write_parquet_atomic

VOCAB_SCHEMA = pa.schema(
    [("concept", pa.string()), ("concept_id", pa.int32()), ("count", pa.int64()), ("source", pa.string())]
)
VOCAB_VERSION = 1
# Nouns WordNet files as physical that captions use to describe the photograph, not what it shows.
FRAMING_NOUNS = frozenset(
    {"photo", "photograph", "picture", "pic", "image", "shot", "view", "scenery", "stock", "illustration",
     "closeup", "background", "foreground", "front", "side", "top", "bottom", "edge", "thing", "object",
     "part", "piece", "area", "place", "spot", "way", "number", "right", "order", "favourite", "favorite"}
)


class VocabularyError(ValueError, CocuError):
    """A vocabulary file this code cannot read (wrong schema version or columns)."""


def _tagger():
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


@lru_cache(maxsize=500_000)
def _is_candidate(phrase: str) -> bool:
    """Why: one WordNet verdict per distinct phrase, however often it appears."""
    if phrase in FRAMING_NOUNS:
        return False
    if " " in phrase and not wordnet().synsets(phrase.replace(" ", "_"), wordnet().NOUN):
        return False
    return is_physical_noun(phrase)


def caption_candidates(caption: str, max_ngram: int = 3, tagger=None) -> list[str]:
    """Why: the physical noun (phrase) mentions of one caption, longest match first, in order."""
    toks = tokenize(caption or "")
    if not toks:
        return []
    tagger = tagger or _tagger()
    tags = [t for _, t in tagger.tag(" ".join(toks), tokenize=False)]
    if len(tags) != len(toks):  # the tagger split differently: let WordNet alone decide
        tags = ["NN"] * len(toks)
    lemmas = [singular(t) for t in toks]
    found: list[str] = []
    i = 0
    while i < len(toks):
        for n in range(min(max_ngram, len(toks) - i), 0, -1):
            if not tags[i + n - 1].startswith("NN"):
                continue
            if n > 1 and tags[i].startswith("JJ"):  # "a black kite" is a kite, not Milvus migrans
                continue
            phrase = " ".join(lemmas[i:i + n])
            if _is_candidate(phrase):
                found.append(phrase)
                i += n
                break
        else:
            i += 1
    return found


def count_candidates(captions: Iterable[Optional[str]], max_ngram: int = 3, chunk: int = 100_000) -> Counter:
    """Why: caption frequency of every candidate, streaming: only one chunk of captions is held at a time
    (identical captions within a chunk are tagged once); the counts do not depend on the chunking."""
    tagger = _tagger()
    counts: Counter = Counter()
    it = iter(captions)
    while True:
        per_caption = Counter(c for c in islice(it, chunk) if c)
        if not per_caption:
            break
        for cap, mult in per_caption.items():
            for concept in set(caption_candidates(cap, max_ngram, tagger)):
                counts[concept] += mult
    return counts


def build_vocabulary(
    captions: Iterable[Optional[str]], top_k: int = 2000, extra_concepts: Iterable[str] = (), max_ngram: int = 3
) -> pa.Table:
    """Why: the concept ids every later stage shares; benchmark classes are always included."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    counts = count_candidates(captions, max_ngram)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]  # the documented tie order
    rows = [(c, n, "captions") for c, n in ranked]
    have = {c for c, _ in ranked}
    for extra in extra_concepts:
        c = " ".join(normalise(extra))
        if c and c not in have:
            rows.append((c, counts.get(c, 0), "benchmark"))
            have.add(c)
    return pa.table(
        {
            "concept": pa.array([r[0] for r in rows], pa.string()),
            "concept_id": pa.array(range(len(rows)), pa.int32()),
            "count": pa.array([r[1] for r in rows], pa.int64()),
            "source": pa.array([r[2] for r in rows], pa.string()),
        },
        schema=VOCAB_SCHEMA,
    )


def write_vocabulary(path: str | Path, table: pa.Table, metadata: Optional[dict] = None) -> None:
    """Why: the vocabulary is an artifact of its own, versioned and written atomically."""
    write_parquet_atomic(path, table, VOCAB_SCHEMA, VOCAB_VERSION, metadata)


def read_vocabulary(path: str | Path) -> pa.Table:
    """Why: refuse a vocabulary written under another schema version instead of misreading it."""
    v = parquet_schema_version(path)
    if v != VOCAB_VERSION:
        raise VocabularyError(f"{path}: vocabulary schema version {v}, expected {VOCAB_VERSION}")
    table = pq.read_table(path)
    if table.schema.names[:4] != VOCAB_SCHEMA.names:
        raise VocabularyError(f"{path}: columns {table.schema.names}, expected {VOCAB_SCHEMA.names}")
    return table
