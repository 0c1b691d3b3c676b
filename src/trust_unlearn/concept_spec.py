"""What to forget: target prompts, anchor prompts (what the target becomes) and retain prompts.

From CLI flags or a YAML file; on the testbed, sensible defaults are built from the world's
vocabulary, so `trust unlearn --concept circle` just works. For a combined or conditional concept
the retain set includes look-alikes ("red circle": red squares and blue circles) -- half of them: the
other half, like half of every retain scene, is kept unseen for the evaluation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from trust_unlearn.errors import UserError
from trust_unlearn.evaluation.protocol import RUN_TEMPLATES, TRAIN_FULL_TEMPLATES, retain_split
from trust_unlearn.world.captions import mentioned
from trust_unlearn.world.concepts import anchor_substitution, caption, parse_concept, target_scenes
from trust_unlearn.world.shapes import Scene


@dataclass
class ConceptSpec:
    name: str
    targets: list[str]
    anchors: list[str]  # paired with targets (same length)
    retains: list[str] = field(default_factory=list)
    world_concept: str | None = None  # the shapes-world concept, when the testbed judge can grade it

    def validate(self) -> "ConceptSpec":
        self.targets = [t.strip() for t in self.targets if t and t.strip()]
        self.anchors = [a.strip() for a in self.anchors if a is not None]
        self.retains = [r.strip() for r in self.retains if r and r.strip()]
        if not self.targets:
            raise UserError("empty concept: give at least one target prompt (--concept TEXT or `targets:` in the YAML)")
        if len(self.anchors) == 1 and len(self.targets) > 1:
            self.anchors = self.anchors * len(self.targets)
        if len(self.anchors) != len(self.targets):
            raise UserError(f"{len(self.anchors)} anchors for {len(self.targets)} targets: give one anchor, or one per target")
        same = [t for t, a in zip(self.targets, self.anchors) if t.lower() == a.lower()]
        if same:
            raise UserError(f"anchor equals target ({same[0]!r}): the anchor is what the concept should turn into; "
                            "pick something else, e.g. --anchor 'a square' for --concept circle")
        overlap = set(map(str.lower, self.targets)) & set(map(str.lower, self.retains))
        if overlap:
            raise UserError(f"prompt {sorted(overlap)[0]!r} is both a target and a retain prompt")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def testbed_spec(text: str) -> ConceptSpec:
    """Default prompts for a shapes-world concept: targets in varied captions (including short ones that
    state only the concept), anchors with one attribute swapped, retain prompts for the protocol's *seen*
    retain scenes. No evaluation template and no unseen scene is used (see evaluation/protocol.py)."""
    concept = parse_concept(text)
    attr, replacement = anchor_substitution(concept)
    templates = [t for t in RUN_TEMPLATES if all(mentioned(t)[a] for a, _ in concept.constraints)]
    targets, anchors = [], []
    for i, scene in enumerate(target_scenes(concept)):
        for k in range(3):
            template = templates[(3 * i + k) % len(templates)]
            anchor_scene = Scene(**{**scene.__dict__, attr: replacement})
            t, a = caption(scene, template), caption(anchor_scene, template)
            if t not in targets:
                targets.append(t)
                anchors.append(a)
    seen = retain_split(concept)["seen"]
    retains = [caption(s, TRAIN_FULL_TEMPLATES[i % len(TRAIN_FULL_TEMPLATES)]) for i, s in enumerate(seen)]
    return ConceptSpec(name=concept.text, targets=targets, anchors=anchors, retains=retains, world_concept=concept.text).validate()


def load_spec_file(path: str | Path) -> ConceptSpec:
    path = Path(path)
    if not path.exists():
        raise UserError(f"concept file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"concept file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"concept file {path} must be a mapping with targets / anchors / retains")
    as_list = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
    return ConceptSpec(
        name=str(data.get("name") or (as_list(data.get("targets")) or [""])[0]),
        targets=as_list(data.get("targets")), anchors=as_list(data.get("anchors", [""])),
        retains=as_list(data.get("retains")), world_concept=data.get("world_concept"),
    ).validate()


def resolve_spec(concept: str | None, anchor: str | None = None, retain: list[str] | None = None,
                 spec_file: str | None = None, is_testbed: bool = True) -> ConceptSpec:
    """CLI flags or a YAML file -> a validated spec; testbed concepts get vocabulary defaults."""
    if spec_file:
        return load_spec_file(spec_file)
    if concept is None or not concept.strip():
        raise UserError("empty concept: pass --concept TEXT (e.g. circle, 'red circle') or --spec FILE.yaml")
    if is_testbed and anchor is None and not retain:
        return testbed_spec(concept)
    if anchor is None:
        raise UserError("--anchor is required outside the testbed: say what the concept should become "
                        "(e.g. --concept 'nudity' --anchor 'a person wearing clothes')")
    return ConceptSpec(name=concept, targets=[concept], anchors=[anchor], retains=retain or []).validate()
