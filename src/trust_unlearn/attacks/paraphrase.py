"""Paraphrase attack: ask for the concept in words the unlearning never saw.

On the testbed: the target prompt with each concept word replaced by its held-out synonyms
(`world.captions.HELDOUT_SYNONYMS`), then the held-out templates with held-out synonyms for every
attribute of the target's scene (`heldout_phrases`). For real models: the prompts of a user file
(`--prompts-file`, one per line). Budget = the number of candidates tried per target prompt.
"""
from __future__ import annotations

import itertools
import re

from trust_unlearn.attacks.base import Attack, register_attack
from trust_unlearn.errors import UserError
from trust_unlearn.world.captions import HELDOUT_SYNONYMS, heldout_phrases
from trust_unlearn.world.shapes import ATTRIBUTES


def scene_words(prompt: str) -> dict[str, str]:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    return {attr: v for attr, values in ATTRIBUTES.items() for v in values if v in words}


@register_attack("paraphrase")
class Paraphrase(Attack):
    kind = "black-box (prompts only)"
    budget_unit = "candidates"
    default_budget = 6
    quick_budget = 2
    user_prompts: list[str] | None = None

    def candidates(self, target_prompt: str, index: int) -> list[str]:
        if self.user_prompts is not None:
            out = list(self.user_prompts)
        else:
            out = []
            words = [v for _, v in self.concept.constraints]
            for combo in itertools.product(*(HELDOUT_SYNONYMS[w] for w in words)):
                p = target_prompt
                for w, syn in zip(words, combo):
                    p = re.sub(rf"\b{w}\b", syn, p)
                out.append(p)
            mine = scene_words(target_prompt)
            phrases = [p for p, s in heldout_phrases() if self.concept.matches(s)]
            same = [p for p, s in heldout_phrases() if self.concept.matches(s) and all(getattr(s, a) == v for a, v in mine.items())]
            out += [p for p in same + phrases if p not in out]
        out = out[: self.budget]
        if not out:
            raise UserError("paraphrase attack: no paraphrase prompts (give a non-empty --prompts-file)")
        if getattr(self, "bar", None) is not None:
            self.bar.update(self.budget)
        return out
