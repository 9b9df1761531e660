"""The toy world's concepts: 8 stuff regions and 8 things, with the words captions use for them.

Captions use synonyms and plurals as web captions do; ``SURFACE_FORMS`` maps every surface form
back to its concept so the semantic gap can be measured from caption text alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    """One toy concept: its label id in masks, kind, and caption vocabulary."""

    id: int
    name: str
    kind: str  # "stuff" or "thing"
    synonyms: tuple[str, ...]  # singular surface forms, first is the canonical name
    plurals: tuple[str, ...] = ()  # plural forms aligned with synonyms (things only)


STUFF: tuple[Concept, ...] = (
    Concept(1, "sky", "stuff", ("sky",)),
    Concept(2, "grass", "stuff", ("grass", "lawn", "meadow")),
    Concept(3, "water", "stuff", ("water", "lake", "sea")),
    Concept(4, "sand", "stuff", ("sand", "beach")),
    Concept(5, "snow", "stuff", ("snow",)),
    Concept(6, "road", "stuff", ("road", "street")),
    Concept(7, "wall", "stuff", ("wall", "brick wall")),
    Concept(8, "forest", "stuff", ("forest", "woodland")),
)

THINGS: tuple[Concept, ...] = (
    Concept(9, "ball", "thing", ("ball", "football"), ("balls", "footballs")),
    Concept(10, "box", "thing", ("box", "crate", "package"), ("boxes", "crates", "packages")),
    Concept(11, "tent", "thing", ("tent",), ("tents",)),
    Concept(12, "boat", "thing", ("boat", "sailboat", "ship"), ("boats", "sailboats", "ships")),
    Concept(13, "kite", "thing", ("kite",), ("kites",)),
    Concept(14, "car", "thing", ("car", "automobile"), ("cars", "automobiles")),
    Concept(15, "tree", "thing", ("tree",), ("trees",)),
    Concept(16, "person", "thing", ("person", "man", "woman", "child"), ("people", "men", "women", "children")),
)

CONCEPTS: tuple[Concept, ...] = STUFF + THINGS
BY_NAME: dict[str, Concept] = {c.name: c for c in CONCEPTS}
BY_ID: dict[int, Concept] = {c.id: c for c in CONCEPTS}
NUM_CLASSES = len(CONCEPTS) + 1  # + background (id 0)
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(c.name for c in CONCEPTS)


def _surface_forms() -> dict[str, str]:
    forms: dict[str, str] = {}
    for c in CONCEPTS:
        for w in c.synonyms + c.plurals:
            forms[w] = c.name
    return forms


SURFACE_FORMS: dict[str, str] = _surface_forms()
# Lemma-level synonyms (what a lemmatiser yields) -> toy concept; used to score curated concepts
# against ground truth. "woods"/"people" style irregular forms are listed explicitly.
LEMMA_TO_CONCEPT: dict[str, str] = {**SURFACE_FORMS, "people": "person"}
