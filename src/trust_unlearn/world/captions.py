"""Captions for the shapes world: training templates and a held-out paraphrase vocabulary.

Training captions use only the words in TRAIN_WORDS. HELDOUT_* synonyms and templates never
appear in training, so a paraphrase attack asks the model something it was never taught.
"""
from __future__ import annotations

import itertools
import re

import torch

from trust_unlearn.world.shapes import BACKGROUNDS, COLOURS, SHAPES, Scene, all_scenes

# {c} colour, {s} shape, {b} background word ("plain" / "striped").
TRAIN_TEMPLATES = (
    "a {c} {s}",
    "a {c} {s} on a {b} background",
    "a photo of a {c} {s} on a {b} background",
    "{c} {s}, {b} background",
    "an image of a {c} {s}",
    "a drawing of a {c} {s} against a {b} background",
    "a picture of a {s} in {c}",
    "a {s} in {c} on a {b} background",
    "a {c} {s} with a {b} background",
    "{c} {s}",
    # captions that omit attributes
    "a {s}",
    "a photo of a {s}",
    "a {s} on a {b} background",
    "{s}, {b} background",
    "a {c} shape",
    "a {c} shape on a {b} background",
    "something {c}",
    "a shape on a {b} background",
)

HELDOUT_TEMPLATES = (
    "an illustration of a {c} {s} over a {b} backdrop",
    "there is a {c} {s} here",
    "a {s} coloured {c}",
    "{c} {s} sitting on a {b} surface",
)

# Held-out synonyms: never used in training captions.
HELDOUT_SYNONYMS = {
    "circle": ("disk", "round dot"),
    "square": ("box", "block"),
    "triangle": ("wedge", "pyramid shape"),
    "cross": ("plus sign", "x mark"),
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "lime"),
    "blue": ("navy", "azure"),
    "yellow": ("golden", "lemon"),
    "plain": ("solid", "blank"),
    "striped": ("stripy", "banded"),
}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def train_caption(scene: Scene, template: str) -> str:
    return template.format(c=scene.colour, s=scene.shape, b=scene.background)


def mentioned(template: str) -> dict[str, bool]:
    """Which attributes a template states (the rest are left to the model)."""
    return {"shape": "{s}" in template, "colour": "{c}" in template, "background": "{b}" in template}


TRAIN_WORDS = frozenset(
    w for t in TRAIN_TEMPLATES for w in _words(t.format(c=" ".join(COLOURS), s=" ".join(SHAPES), b=" ".join(BACKGROUNDS)))
)
# Words that only the held-out phrases use ("shape" in "pyramid shape" is a training word).
HELDOUT_WORDS = (
    frozenset(w for syns in HELDOUT_SYNONYMS.values() for s in syns for w in _words(s))
    | frozenset(w for t in HELDOUT_TEMPLATES for w in _words(t.format(c="", s="", b="")))
) - TRAIN_WORDS


def all_train_captions() -> list[str]:
    """Every distinct training caption (a finite set: text states can be cached once)."""
    seen: dict[str, None] = {}
    for scene, template in itertools.product(all_scenes(), TRAIN_TEMPLATES):
        seen.setdefault(train_caption(scene, template), None)
    return list(seen)


def random_captions(scenes: list[Scene], generator: torch.Generator, dropout: float = 0.0) -> list[str]:
    """One random training caption per scene; with probability `dropout` the empty caption (for CFG)."""
    idx = torch.randint(0, len(TRAIN_TEMPLATES), (len(scenes),), generator=generator).tolist()
    drop = (torch.rand(len(scenes), generator=generator) < dropout).tolist()
    return ["" if d else train_caption(s, TRAIN_TEMPLATES[i]) for s, i, d in zip(scenes, idx, drop)]


def heldout_phrases() -> list[tuple[str, Scene]]:
    """Held-out paraphrase prompts, each with the scene its words literally describe."""
    out = []
    for k, scene in enumerate(all_scenes()):
        template = HELDOUT_TEMPLATES[k % len(HELDOUT_TEMPLATES)]
        for v in range(2):
            syn = lambda w: HELDOUT_SYNONYMS[w][(v + k) % 2]  # noqa: E731
            out.append((template.format(c=syn(scene.colour), s=syn(scene.shape), b=syn(scene.background)), scene))
    return out
