"""Prompt templates that wrap a class or concept name into a sentence for the text encoder.

Three sets, shared by training (a random template per concept prompt) and evaluation (templates
averaged into one class embedding):

- ``FULL_80``: the 80 prompts CLIP hand-wrote for ImageNet; GroupViT draws one per noun in training.
- ``SUBSET_7``: GroupViT's 7-template subset for zero-shot ImageNet classification
  (GV ``datasets/imagenet_template.py``). It is CLIP's 7-prompt ensemble except for one word:
  GroupViT has ``'a bad photo of a {}.'`` where CLIP's notebook has ``'a bad photo of the {}.'``;
  we follow GroupViT, whose numbers the protocol reproduces.
- ``SIMPLE``: ``'a photo of a {}.'``, the single template of zero-shot segmentation.
"""

from __future__ import annotations

from typing import Literal

FULL_80: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

SUBSET_7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

SIMPLE: tuple[str, ...] = ("a photo of a {}.",)

TemplateSet = Literal["full80", "subset7", "simple"]
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"full80": FULL_80, "subset7": SUBSET_7, "simple": SIMPLE}


def get_templates(name: TemplateSet) -> tuple[str, ...]:
    """Why: config fields name a template set; one lookup with a clear error for a wrong name."""
    try:
        return TEMPLATE_SETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown template set {name!r}; choose from {sorted(TEMPLATE_SETS)}") from None


def fill(templates: tuple[str, ...] | list[str], name: str) -> list[str]:
    """Why: every template applied to one name, in template order (the order embeddings are averaged in)."""
    return [t.format(name) for t in templates]
