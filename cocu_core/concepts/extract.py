"""Per-caption concept extraction: longest n-gram match against the vocabulary, exact ids only.

Matching is a dict lookup of lemma tuples, never a substring test, so "cart" cannot match "car".
Lemmas are cached per unique token (``text.singular``) and results per unique caption.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from cocu_core.concepts.text import normalise


class ConceptExtractor:
    """Maps captions to vocabulary concept ids; "ice cream" wins over "ice" and "cream"."""

    def __init__(self, vocab_concepts: Sequence[str], max_ngram: int = 3):
        self.concepts = list(vocab_concepts)
        self.max_ngram = max(1, max(max_ngram, max((len(c.split()) for c in self.concepts), default=1)))
        self._ids: dict[tuple[str, ...], int] = {}
        for i, c in enumerate(self.concepts):
            self._ids.setdefault(tuple(c.split()), i)

    def extract_lemmas(self, toks: Sequence[str]) -> list[int]:
        """Why: the scan itself, on already-normalised tokens (ids in order, deduplicated)."""
        out: list[int] = []
        seen: set[int] = set()
        i, n_tok, ids = 0, len(toks), self._ids
        while i < n_tok:
            for n in range(min(self.max_ngram, n_tok - i), 0, -1):
                cid = ids.get(tuple(toks[i:i + n]))
                if cid is not None:
                    if cid not in seen:
                        seen.add(cid)
                        out.append(cid)
                    i += n
                    break
            else:
                i += 1
        return out

    def extract(self, caption: Optional[str]) -> list[int]:
        """Why: concept ids of one caption; an empty or unmatched caption gives []."""
        return self.extract_lemmas(normalise(caption)) if caption else []

    def extract_many(self, captions: Sequence[Optional[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Why: CSR (offsets [n+1] int64, ids int32) is what the batched curation gathers from."""
        cache: dict[str, list[int]] = {}
        lens = np.zeros(len(captions), np.int64)
        parts: list[list[int]] = []
        for i, cap in enumerate(captions):
            key = cap or ""
            got = cache.get(key)
            if got is None:
                got = cache[key] = self.extract(key)
            parts.append(got)
            lens[i] = len(got)
        offsets = np.zeros(len(captions) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = [c for p in parts for c in p]
        return offsets, np.asarray(flat, np.int32)
