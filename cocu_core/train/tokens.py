"""CLIP BPE token ids for the training texts, made in the loader workers from cached pieces.

A step feeds ``1 + K`` texts per image; tokenizing them with open_clip's Python tokenizer in the training
process cost ~35 ms a step at batch 256. The prompts are a finite set (templates x concepts), so their ids
are composed from cached pieces: each template's ids before and after ``{}`` and each concept's ids,
tokenized once. Composition is exact only where the tokenizer cannot join text across a seam, which
:func:`_plain` and :func:`_seam_splits` check (printable ASCII without ``&``/``<`` so cleaning is the
identity, and seam characters the tokenizer's regex always splits between); any other prompt is
tokenized whole, once, and cached. A caption is tokenized once per sample (it also pads missing prompts).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

_PLAIN = re.compile(r"[ -%(-;=-~]*")  # printable ASCII less '&', "'" and '<' (entities, contractions, specials)


def _cls(ch: str) -> str:
    """Why: the tokenizer's regex runs letters together and other symbols together; digits and spaces split."""
    if ch.isspace():
        return "s"
    if ch.isalpha():
        return "l"
    if ch.isdigit():
        return "n"
    return "o"


def _plain(text: str) -> bool:
    """Why: on such text ftfy, html.unescape and lower() act per character, so they commute with concatenation."""
    return _PLAIN.fullmatch(text) is not None


def _seam_splits(left: str, right: str) -> bool:
    """Why: no token of the whole string crosses the seam iff the characters either side never join."""
    if not left or not right:
        return True
    a, b = _cls(left[-1]), _cls(right[0])
    return "s" in (a, b) or (a != b) or a == "n"


def token_row(ids: Sequence[int], context_length: int, sot: int, eot: int) -> np.ndarray:
    """Why: open_clip's layout: SOT, ids, EOT, zero padding; a long text is cut with its EOT kept last."""
    row = np.zeros(context_length, np.int64)
    toks = [sot, *ids, eot]
    if len(toks) > context_length:
        toks = toks[:context_length]
        toks[-1] = eot
    row[: len(toks)] = toks
    return row


class TextTokens:
    """Token rows for captions and (template, concept) prompts, with the prompt pieces cached per process."""

    def __init__(self, templates: Sequence[str], context_length: int):
        from cocu_core.model.text import clip_tokenizer

        tok = clip_tokenizer()
        self.context_length, self.templates = int(context_length), tuple(templates)
        self._sot, self._eot = tok.sot_token_id, tok.eot_token_id
        self._pieces: list[Optional[tuple[str, str, list[int], list[int]]]] = []
        for t in self.templates:
            head, sep, tail = t.partition("{}")
            ok = sep and "{}" not in tail and _plain(head) and _plain(tail)
            self._pieces.append((head, tail, self._encode(head), self._encode(tail)) if ok else None)
        self._concepts: dict[str, Optional[list[int]]] = {}
        self._whole: dict[tuple[int, str], np.ndarray] = {}

    @staticmethod
    def _encode(text: str) -> list[int]:
        from cocu_core.model.text import clip_tokenizer

        return clip_tokenizer().encode(text)

    def text(self, text: str) -> np.ndarray:
        """Why: one text's row, tokenized now (captions: once per sample)."""
        return token_row(self._encode(text), self.context_length, self._sot, self._eot)

    def prompt(self, template: int, concept: str) -> np.ndarray:
        """Why: the row of ``templates[template]`` filled with `concept`, from cached pieces where that is exact."""
        pieces = self._pieces[template]
        ids = self._concepts.get(concept, ...)
        if ids is ...:
            ids = self._encode(concept) if concept and _plain(concept) else None
            self._concepts[concept] = ids
        if pieces is not None and ids is not None:
            head, tail, h, t = pieces
            if _seam_splits(head, concept) and _seam_splits(concept, tail):
                return token_row([*h, *ids, *t], self.context_length, self._sot, self._eot)
        row = self._whole.get((template, concept))
        if row is None:
            row = self._whole[(template, concept)] = self.text(self.templates[template].replace("{}", concept))
        return row
