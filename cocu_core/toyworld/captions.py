"""Caption templates with synonyms and plurals that, like web alt-text, name only some of what is seen.

Things are named with probability ``p_mention_thing``, stuff with ``p_mention_stuff`` (rarely), each scaled by its
salience (its area share against a reference, to a power: large regions are named more, small ones less, as web
alt-text does; that is what gives a CLIP trained on such captions the semantic bias of the paper's Sec. 3.2), and a
fraction ``p_noise`` of captions are off-topic. This is the semantic gap CoCu closes.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

import numpy as np

from cocu_core.toyworld.concepts import BY_NAME, SURFACE_FORMS

NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

STUFF_PHRASES: dict[str, tuple[str, ...]] = {
    "sky": ("under the {w}", "against a clear {w}", "with the {w} behind"),
    "grass": ("on the {w}", "on a green {w}", "in the {w}"),
    "water": ("on the {w}", "by the {w}", "near the {w}"),
    "sand": ("on the {w}", "on a sunny {w}", "at the {w}"),
    "snow": ("in the {w}", "on fresh {w}", "covered in {w}"),
    "road": ("on the {w}", "by the {w}", "on an empty {w}"),
    "wall": ("in front of a {w}", "by the old {w}", "next to a {w}"),
    "forest": ("near the {w}", "at the edge of a {w}", "by a dark {w}"),
}

THING_TEMPLATES = (
    "{things} {where}",
    "a photo of {things} {where}",
    "{things} {where}.",
    "in this picture: {things} {where}",
    "look at {things} {where}!",
    "nice shot of {things} {where}",
    "{things} {where}, taken last summer",
    "my favourite picture: {things} {where}",
)
STUFF_ONLY_TEMPLATES = ("a view {where}", "scenery {where}", "a quiet afternoon {where}", "just a day {where}")
EMPTY_TEMPLATES = (
    "a nice day outside",
    "photo taken last weekend",
    "untitled",
    "what a day!",
    "image 2048",
    "we had so much fun",
)
NOISE_CAPTIONS = (
    "click here to buy the best shoes online",
    "my cat sleeping on the sofa",
    "happy birthday to my little sister",
    "stock photo number 4823, all rights reserved",
    "the view from our hotel room",
    "free shipping on all orders today",
    "a plate of pasta with tomato sauce",
    "new laptop and a cup of coffee on the desk",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def thing_phrase(name: str, colours: list[str], rng: np.random.Generator) -> str:
    """Why: 'a red ball' / 'two boxes' — counts and colours make captions varied and natural."""
    c = BY_NAME[name]
    k = int(rng.integers(len(c.synonyms)))
    if len(colours) == 1:
        word = c.synonyms[k]
        if name in ("tree", "person") or rng.random() < 0.4:
            return f"{_article(word)} {word}"
        return f"{_article(colours[0])} {colours[0]} {word}"
    return f"{NUMBERS.get(len(colours), 'many')} {c.plurals[k]}"


def salience_factor(area: float, reference: float, exponent: float) -> float:
    """Why: CLIP names (hence learns) salient concepts more: the naming rate scales with (area / reference)^exponent;
    the caller caps rate x factor at 1. Only area is modelled (not centrality or contrast)."""
    return float((area / reference) ** exponent) if exponent else 1.0


def make_caption(
    stuff: list[str],
    things: list[tuple[str, str]],
    rng: np.random.Generator,
    p_thing: float,
    p_stuff: float,
    p_noise: float,
    salience: Optional[dict[str, float]] = None,
) -> tuple[str, bool]:
    """Why: returns (caption, is_noise); each present concept is named independently at its kind's rate times its
    salience factor (`salience[name]`, default 1; see `naming_probability`)."""
    if rng.random() < p_noise:
        return NOISE_CAPTIONS[rng.integers(len(NOISE_CAPTIONS))], True
    groups: dict[str, list[str]] = {}
    for name, colour in things:
        groups.setdefault(name, []).append(colour)
    sal = salience or {}
    named_things = [n for n in groups if rng.random() < min(1.0, p_thing * sal.get(n, 1.0))]
    named_stuff = [s for s in dict.fromkeys(stuff) if rng.random() < min(1.0, p_stuff * sal.get(s, 1.0))]
    where_parts = []
    for s in named_stuff:
        c = BY_NAME[s]
        w = c.synonyms[int(rng.integers(len(c.synonyms)))]
        phrases = STUFF_PHRASES[s]
        where_parts.append(phrases[int(rng.integers(len(phrases)))].format(w=w))
    where = " and ".join(where_parts)
    if named_things:
        phrases = [thing_phrase(n, groups[n], rng) for n in named_things]
        things_txt = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        tpl = THING_TEMPLATES[int(rng.integers(len(THING_TEMPLATES)))]
        cap = tpl.format(things=things_txt, where=where)
    elif named_stuff:
        cap = STUFF_ONLY_TEMPLATES[int(rng.integers(len(STUFF_ONLY_TEMPLATES)))].format(where=where)
    else:
        cap = EMPTY_TEMPLATES[int(rng.integers(len(EMPTY_TEMPLATES)))]
    cap = re.sub(r"\s+", " ", cap).strip().replace(" .", ".").replace(" ,", ",").replace(" !", "!")
    if rng.random() < 0.5:
        cap = cap[0].upper() + cap[1:]
    return cap, False


_WORD_RE = re.compile(r"[a-z]+")
_MAX_FORM_WORDS = max(len(f.split()) for f in SURFACE_FORMS)


def concepts_named(caption: str) -> list[str]:
    """Why: measure the gap from caption text (longest surface-form match), not from generator flags."""
    words = _WORD_RE.findall(caption.lower())
    found: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_FORM_WORDS, len(words) - i), 0, -1):
            form = " ".join(words[i : i + n])
            if form in SURFACE_FORMS:
                found.append(SURFACE_FORMS[form])
                i += n
                break
        else:
            i += 1
    return list(dict.fromkeys(found))


def count_named(captions: list[str]) -> Counter:
    """Why: small helper for tests and reports."""
    c: Counter = Counter()
    for cap in captions:
        c.update(concepts_named(cap))
    return c
