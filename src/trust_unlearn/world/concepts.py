"""Concepts of the shapes world and the prompt sets built from them.

A concept is a set of attribute constraints: "circle" {shape}, "red circle" {colour, shape}
(combined), "circle on striped background" {shape, background} (conditional). An image shows the
concept when the judge's reading satisfies every constraint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from trust_unlearn.errors import UserError
from trust_unlearn.world.shapes import ATTRIBUTES, Scene, all_scenes

_VALUE_TO_ATTRIBUTE = {v: a for a, values in ATTRIBUTES.items() for v in values}
# Templates that state all three attributes: retain accuracy checks every attribute.
FULL_TEMPLATES = (
    "a {c} {s} on a {b} background",
    "a photo of a {c} {s} on a {b} background",
    "{c} {s}, {b} background",
    "a drawing of a {c} {s} against a {b} background",
    "a {s} in {c} on a {b} background",
    "a {c} {s} with a {b} background",
)


@dataclass(frozen=True)
class Concept:
    text: str
    constraints: tuple[tuple[str, str], ...]  # (attribute, value), sorted
    kind: str  # individual | combined | conditional

    def matches(self, scene: Scene | dict) -> bool:
        get = scene.get if isinstance(scene, dict) else lambda a: getattr(scene, a)
        return all(get(a) == v for a, v in self.constraints)

    def shares_part(self, scene: Scene) -> bool:
        """A look-alike: satisfies some but not all constraints (red squares for "red circle")."""
        return not self.matches(scene) and any(getattr(scene, a) == v for a, v in self.constraints)

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self.constraints)


def valid_words() -> str:
    return ", ".join(f"{a}: {'/'.join(v)}" for a, v in ATTRIBUTES.items())


def parse_concept(text: str) -> Concept:
    """Parse "circle", "red", "striped background", "red circle", "circle on striped background"."""
    clean = " ".join(re.findall(r"[a-z]+", (text or "").lower()))
    if not clean:
        raise UserError(f"empty concept: name one, e.g. --concept circle ({valid_words()})")
    context = None
    match = re.fullmatch(r"(.+?) on (?:an? )?(\w+)(?: background)?", clean)
    if match and match.group(2) in ATTRIBUTES["background"]:
        clean, context = match.group(1), match.group(2)
    words = [w for w in clean.split() if w not in ("a", "an", "background")]
    constraints: dict[str, str] = {}
    for w in words:
        attr = _VALUE_TO_ATTRIBUTE.get(w)
        if attr is None:
            raise UserError(f"unknown concept word {w!r} in {text!r}; valid words are {valid_words()}, combined "
                            "('red circle') or conditional ('circle on striped background')")
        if attr in constraints:
            raise UserError(f"concept {text!r} names two {attr}s ({constraints[attr]}, {w}); name at most one")
        constraints[attr] = w
    if not constraints:
        raise UserError(f"concept {text!r} names no attribute; valid words are {valid_words()}")
    if context:
        if "background" in constraints:
            raise UserError(f"concept {text!r} names the background twice")
        kind = "conditional"
        constraints["background"] = context
    else:
        kind = "individual" if len(constraints) == 1 else "combined"
    return Concept(text=text.strip(), constraints=tuple(sorted(constraints.items())), kind=kind)


# The attribute an anchor replaces, in order of preference: the colour, else the object, else the context,
# and what each value becomes. Chosen on testbed v3 by iterating on (what are now) the test tasks, before the
# protocol of docs/protocol.md existed: said there plainly; later changes are made on the dev tasks only.
_ANCHOR_ORDER = ("colour", "shape", "background")
ANCHOR_VALUE = {
    "circle": "triangle", "square": "cross", "triangle": "cross", "cross": "circle",
    "red": "blue", "green": "red", "blue": "yellow", "yellow": "blue",
    "plain": "striped", "striped": "plain",
}


def anchor_substitution(concept: Concept) -> tuple[str, str]:
    """The attribute the default anchor changes and its replacement value ("red circle" -> colour, blue)."""
    attrs = concept.attributes
    attr = next(a for a in _ANCHOR_ORDER if a in attrs)
    return attr, ANCHOR_VALUE[attrs[attr]]


def anchor_concept(concept: Concept) -> Concept:
    """The concept the default anchor prompts show ("red circle" -> "blue circle")."""
    attr, value = anchor_substitution(concept)
    constraints = tuple(sorted({**concept.attributes, attr: value}.items()))
    return Concept(text=" ".join(v for _, v in constraints), constraints=constraints, kind=concept.kind)


def caption(scene: Scene, template: str) -> str:
    return template.format(c=scene.colour, s=scene.shape, b=scene.background)


def target_scenes(concept: Concept) -> list[Scene]:
    return [s for s in all_scenes() if concept.matches(s)]


def retain_scenes(concept: Concept) -> list[Scene]:
    return [s for s in all_scenes() if not concept.matches(s)]


def prompt_set(scenes: list[Scene], per_scene: int, offset: int = 0) -> list[tuple[str, Scene]]:
    """Captions for the scenes, cycling through the full templates for variety."""
    out = []
    for i, scene in enumerate(scenes):
        for k in range(per_scene):
            out.append((caption(scene, FULL_TEMPLATES[(offset + i + k) % len(FULL_TEMPLATES)]), scene))
    return out
