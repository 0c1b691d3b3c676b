"""A deliberately weak "unlearned" model: a word filter in the text encoder.

Every whole-word vocabulary token of the concept's words ("circle", "circles") gets the token
embedding of the anchor word (the next value of the same attribute, as the concept spec's anchors:
circle -> square, red -> green), so prompts that *say* the concept draw something else, while
nothing in the UNet changes. An attack that cannot beat this is not an attack.
"""
from __future__ import annotations

import torch

from trust_unlearn.attacks.base import TextOps, banned_words, is_banned
from trust_unlearn.pipeline import LoadedModel, load_model
from trust_unlearn.world.concepts import Concept
from trust_unlearn.world.shapes import ATTRIBUTES


@torch.no_grad()
def word_filter_model(concept: Concept, base: str = "testbed") -> LoadedModel:
    model = load_model(base)
    text = TextOps(model.pipe)
    table = text.embedding.weight
    rewritten = []
    for attr, value in concept.constraints:
        values = ATTRIBUTES[attr]
        anchor = values[(values.index(value) + 1) % len(values)]
        anchor_ids = text.tokenizer(anchor, add_special_tokens=False).input_ids
        for idx, word in zip(text.vocab_ids.tolist(), text.vocab_words):
            if is_banned(word, (value,)):
                table[idx] = table[anchor_ids].mean(0)
                rewritten.append(word)
    model.source = f"word-filter({concept.text}) of {base}"
    model.extra = {**model.extra, "word_filter": rewritten}
    return model


__all__ = ["word_filter_model", "banned_words"]
