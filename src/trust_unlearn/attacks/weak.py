"""A deliberately weak "unlearned" model: a word filter in the text encoder.

Every whole-word vocabulary token of the concept's words ("circle", "circles") gets the token
embedding of a replacement word (by default the most different value of the same attribute:
circle -> cross, red -> green on the testbed), so prompts that *say* the concept draw something else, while
nothing in the UNet changes. An attack that cannot beat this is not an attack.
"""
from __future__ import annotations

import torch

from trust_unlearn.attacks.base import TextOps, banned_words, is_banned
from trust_unlearn.pipeline import LoadedModel, load_model
from trust_unlearn.world.concepts import Concept
from trust_unlearn.world.shapes import ATTRIBUTES


@torch.no_grad()
def word_filter_model(concept: Concept, base: str = "testbed", anchors: dict[str, str] | None = None) -> LoadedModel:
    """`anchors` maps a concept word to its replacement word. Default: the value of the same attribute
    whose token embedding is least similar to the concept word's (circle -> cross, red -> green on the
    testbed): the most different word, so the filter leaves the concept nowhere in the prompt."""
    model = load_model(base)
    text = TextOps(model.pipe)
    table = text.embedding.weight
    rewritten = []
    for attr, value in concept.constraints:
        values = ATTRIBUTES[attr]
        own = table[text.tokenizer(value, add_special_tokens=False).input_ids].mean(0)

        def row(word):
            return table[text.tokenizer(word, add_special_tokens=False).input_ids].mean(0)

        others = [v for v in values if v != value]
        anchor = (anchors or {}).get(value) or min(others, key=lambda v: float(torch.cosine_similarity(own, row(v), dim=0)))
        anchor_ids = text.tokenizer(anchor, add_special_tokens=False).input_ids
        for idx, word in zip(text.vocab_ids.tolist(), text.vocab_words):
            if is_banned(word, (value,)):
                table[idx] = table[anchor_ids].mean(0)
                rewritten.append(word)
    model.extra = {**model.extra, "word_filter": rewritten}
    model.source = f"word-filter({', '.join(v for _, v in concept.constraints)} -> {anchor}) of {base}"
    return model


__all__ = ["word_filter_model", "banned_words"]
