"""The paper's Table 3 variants as (expansion, ranking, sampling) triples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Expansion = Literal["none", "language", "vision"]
Ranking = Literal["naive", "t2v"]
Sampling = Literal["naive", "cluster"]


@dataclass(frozen=True)
class Variant:
    """Why: one place maps a variant name to the three choices every stage reads."""

    name: str
    expansion: Expansion
    ranking: Ranking
    sampling: Sampling


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("baseline", "none", "naive", "naive"),
    "v1": Variant("v1", "language", "naive", "naive"),
    "v2": Variant("v2", "vision", "naive", "naive"),
    "v3": Variant("v3", "vision", "t2v", "naive"),
    "cocu": Variant("cocu", "vision", "t2v", "cluster"),
}


def get_variant(name: str) -> Variant:
    """Why: a clear error for an unknown name instead of a KeyError."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown curation variant {name!r}; choose one of {sorted(VARIANTS)}") from None
