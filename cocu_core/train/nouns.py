"""GroupViT's own multi-label inputs: the nouns (and verbs) of a caption, by part-of-speech tag.

GV (``datasets/builder.py``, ``WordAugTokenizeWrapper``) tokenises with ``nltk.word_tokenize``, tags
with ``nltk.pos_tag`` and keeps every token tagged NN, NNS, NNP, VBG, VB, VBD, VBN, VBP or VBZ, in
caption order, repeats included. nltk's tagger model cannot be downloaded here, so the same
Treebank tokens are tagged with textblob's pattern tagger (Penn tags, lexicon shipped with the
package); the kept tag set is GV's.
"""

from __future__ import annotations

from functools import lru_cache

GV_TAGS = frozenset({"NN", "NNS", "NNP", "VBG", "VB", "VBD", "VBN", "VBP", "VBZ"})


@lru_cache(maxsize=1)
def _tagger():
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


def caption_nouns(caption: str) -> list[str]:
    """Why: the words GroupViT turns into prompts, in caption order (a repeated word appears twice, as in GV)."""
    from nltk.tokenize import word_tokenize

    tokens = word_tokenize(caption or "", preserve_line=True)
    if not tokens:
        return []
    tags = _tagger().tag(" ".join(tokens), tokenize=False)
    return [w for w, t in tags if t in GV_TAGS]
