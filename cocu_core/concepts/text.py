"""Caption normalisation shared by vocabulary building and extraction, so both agree token for token.

Lower-case, tokenise with nltk's data-free ``wordpunct_tokenize``, keep alphabetic tokens, and
singularise each with WordNet (exception lists first, so "men" -> "man", "geese" -> "goose", then
``morphy`` for regular plurals, "boxes" -> "box"). Lemmas are cached per unique token.
"""

from __future__ import annotations

import re
from functools import lru_cache

from nltk.tokenize import wordpunct_tokenize

from cocu_core.wordnet_data import ensure_nltk_path

_ALPHA = re.compile(r"^[a-z][a-z'\-]*$")
# Plurals WordNet files under a group noun of their own; a segmentation vocabulary wants the kind.
IRREGULAR: dict[str, str] = {"people": "person", "folks": "person"}


def tokenize(caption: str) -> list[str]:
    """Why: lower-cased alphabetic tokens; punctuation and numbers never become concepts."""
    return [t for t in wordpunct_tokenize(caption.lower()) if _ALPHA.match(t)]


@lru_cache(maxsize=1)
def wordnet():
    """Why: load WordNet once from the project's nltk folder (no downloads here)."""
    ensure_nltk_path()
    from nltk.corpus import wordnet as wn

    wn.ensure_loaded()
    return wn


@lru_cache(maxsize=500_000)
def singular(token: str) -> str:
    """Why: one lemma per surface form; cached because corpora repeat few distinct words."""
    if token in IRREGULAR:
        return IRREGULAR[token]
    wn = wordnet()
    exc = wn._exception_map["n"].get(token)
    if exc:
        return exc[0]
    if token.endswith("ss") or len(token) <= 3:  # "glass", "bus", "gas" are already singular
        return token
    cands = wn._morphy(token, wn.NOUN)
    if not cands:
        return token
    # WordNet also lists some plurals as nouns ("shoes"): keep the reading with the most noun senses,
    # the surface form on ties ("pants", "species" stay).
    senses = {c: len(wn._lemma_pos_offset_map.get(c, {}).get("n", ())) for c in cands}
    return max(cands, key=lambda c: (senses[c], c == token))


def normalise(caption: str | None) -> list[str]:
    """Why: the lemma sequence both the vocabulary and the extractor match against."""
    return [singular(t) for t in tokenize(caption)] if caption else []


# Lexicographer files of nouns naming things one can see (WordNet 3.0 lexnames(5WN)).
PHYSICAL_LEXNAMES = frozenset(
    {"noun.artifact", "noun.object", "noun.plant", "noun.animal", "noun.food", "noun.substance",
     "noun.person", "noun.body", "noun.location"}
)


PHYSICAL_SHARE = 0.15  # a noun is physical if at least this share of its tagged uses are physical senses


def _physical_synset(s, depth: int = 0) -> bool:
    """Why: a physical lexname or hypernym, or a group of physical members ("forest" = trees, "herd")."""
    if s.lexname() in PHYSICAL_LEXNAMES:
        return True
    if wordnet().synset("physical_entity.n.01") in s.closure(lambda x: x.hypernyms() + x.instance_hypernyms()):
        return True
    return depth == 0 and s.lexname() == "noun.group" and any(_physical_synset(m, 1) for m in s.member_meronyms())


@lru_cache(maxsize=500_000)
def is_physical_noun(phrase: str) -> bool:
    """Why: keep nouns used mostly for things one can see. WordNet's sense-tagged counts weigh the
    senses ("football" the ball 2 of 11 uses: kept; "view" 9 of 80: dropped); with no counts at all
    ("kite", "hotel room") any physical sense (lexname above or under physical_entity.n.01) counts."""
    wn = wordnet()
    name = phrase.replace(" ", "_")
    synsets = wn.synsets(name, wn.NOUN)
    if not synsets:
        return False
    physical = [_physical_synset(s) for s in synsets]
    counts = [sum(lemma.count() for lemma in s.lemmas() if lemma.name().lower() == name) for s in synsets]
    total = sum(counts)
    if total == 0:
        return any(physical)
    return sum(c for c, p in zip(counts, physical) if p) >= PHYSICAL_SHARE * total
