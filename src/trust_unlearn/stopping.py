"""Stop when forgotten: end a run once the concept is gone and retain is intact, as the alignment scorer reads it.

Every `probe_every` steps the current model generates a few probe images (training-range seeds, the
model's own sampler) for target prompts and for retain prompts, and the run's alignment scorer A reads
them -- the signal TRUST already follows (for a real SD model, CLIP). Never the evaluation judge: the
judge grades the result and must not steer it.

A target probe x of prompt c shows the concept when the scorer prefers c over every *contrast* of c: the
same prompt with the concept's attribute words swapped for every other value of those attributes (for
"red circle" in "a red circle on a plain background": the 15 other colour x shape captions). A forgotten
concept need not turn into its anchor -- an unlearned circle is often drawn as a square, which is neither
circle nor triangle -- so asking "concept or anchor?" reads it present forever. Contrasts need the
concept's vocabulary: on the testbed the world's; for a spec without a world concept (real SD) the anchor
is the only contrast.

  concept present in x:  A(x, c) - max_k A(x, c_k) > -stop_margin   (c_k: the contrasts, the anchor among them)
  retain read:  share of retain probes x_r with A(x_r, c_r) > max_k A(x_r, c_rk)   (c_rk: every other scene's
                caption in the same words) -- with a world vocabulary; without one, real SD:
  retain drift:  1 - mean_r A(x_r, c_r) / mean_r A0(x_r, c_r)   (A0: the original model, same seeds)

A probe reads *forgotten* when its present share <= stop_forget and retain is intact -- retain read at most
stop_retain_drop below the original's, or (without a vocabulary) retain drift <= stop_retain_drift; the
run stops once `stop_patience` probes in a row read forgotten, so `--steps` is a maximum. The margin and the
patience guard against a scorer that reads the concept gone before the judge does (one probe of 16 images
that happens to read 0 % is not enough). If the scorer cannot tell the concept from its contrasts on the
original model (present share < 1/2 before training) the rule says so and never stops the run.
"""
from __future__ import annotations

import itertools
import re

import torch

from trust_unlearn.evaluation.protocol import probe_seeds
from trust_unlearn.pipeline import generate
from trust_unlearn.world.concepts import parse_concept
from trust_unlearn.world.shapes import ATTRIBUTES

MIN_PRESENT_BEFORE = 0.5  # below this the scorer cannot read the concept: the rule would stop on noise


def _swapped(prompt: str, values: dict[str, str]) -> list[str]:
    """`prompt` with the words `values` (attribute -> the value the prompt names) swapped for every other
    combination of those attributes' values."""
    out = []
    for combination in itertools.product(*(ATTRIBUTES[attr] for attr in values)):
        text = prompt
        for old, new in zip(values.values(), combination):
            text = re.sub(rf"\b{old}\b", new, text)
        if text != prompt and text not in out:
            out.append(text)
    return out


def contrasts(prompt: str, anchor: str, world_concept: str | None) -> list[str]:
    """The captions a probe of `prompt` must lose to for the concept to read gone: `prompt` with the concept's
    attribute words swapped for every other combination of their values (the anchor is one of them), or the
    anchor alone without a world concept."""
    if not world_concept:
        return [anchor]
    out = _swapped(prompt, dict(parse_concept(world_concept).constraints))
    return out if anchor in out else [anchor] + out


def retain_contrasts(prompt: str, world_concept: str | None) -> list[str]:
    """The captions a retain probe of `prompt` must beat to read as itself: every attribute word it names swapped
    for every other combination of values (none without a world concept: real SD has no vocabulary to swap)."""
    if not world_concept:
        return []
    named = {attr: [v for v in vs if re.search(rf"\b{v}\b", prompt)] for attr, vs in ATTRIBUTES.items()}
    return _swapped(prompt, {attr: found[0] for attr, found in named.items() if len(found) == 1})


def _read_own(reading: dict) -> float:
    """Share of retain probes the scorer reads as their own caption."""
    return sum(m > 0 for m in reading["retain_margins"]) / len(reading["retain_margins"])


class StoppingRule:
    """Probe readings of the current model, against the original's on the same seeds."""

    def __init__(self, ctx):
        self.ctx, common = ctx, ctx.common
        spec = ctx.spec
        self.targets = [k % len(spec.targets) for k in range(common.probes)]
        self.contrasts = [contrasts(spec.targets[i], spec.anchors[i], spec.world_concept) for i in self.targets]
        self.retains = [spec.retains[k % len(spec.retains)] for k in range(common.probes)] if spec.retains else []
        self.retain_contrasts = [retain_contrasts(r, spec.world_concept) for r in self.retains]
        self.seeds = probe_seeds(common.seed, common.probes + len(self.retains))
        self.reference: dict | None = None  # the original model's reading (set by `calibrate`)
        self.streak = 0  # consecutive probes that read forgotten

    def texts(self) -> list[list[str]]:
        """The probes' prompts, in the batches and the order a reading scores them: target, anchor, retain,
        then every target probe's contrasts (probe by probe). The retain probes' rivals are embedded fresh at each
        reading, never kept (`_best_rival`): some are prompts training reads."""
        spec = self.ctx.spec
        return [[spec.targets[i] for i in self.targets], [spec.anchors[i] for i in self.targets]] + (
            [self.retains] if self.retains else []) + [[c for cs in self.contrasts for c in cs]]

    @torch.no_grad()
    def read(self) -> dict:
        """present: share of target probes read as the concept (contrast_margins: A(x, c) - max_k A(x, c_k) per
        probe; margins: A(x, c) - A(x, anchor), logged beside them); retain_alignment: mean A over retain probes
        (and, with a world vocabulary, retain_margins: each retain probe's own caption against its contrasts,
        logged for scripts/stopping_check.py)."""
        ctx = self.ctx
        targets, anchors = self.texts()[:2]
        images = generate(ctx.model, targets + self.retains, self.seeds, num_inference_steps=ctx.common.probe_steps,
                          show_progress=False).to(ctx.device)
        n = len(targets)
        concept = ctx.scorer.score(images[:n], targets)
        contrast_margin = concept - self._best_rival(images[:n], self.contrasts)
        reading = {"present": float((contrast_margin > -ctx.common.stop_margin).float().mean()),
                   "contrast_margins": [round(float(m), 5) for m in contrast_margin],
                   "margins": [round(float(m), 5) for m in concept - ctx.scorer.score(images[:n], anchors)]}
        if self.retains:
            own = ctx.scorer.score(images[n:], self.retains)
            reading["retain_alignment"] = float(own.mean())
            if self.retain_contrasts and all(self.retain_contrasts):
                margin = own - self._best_rival(images[n:], self.retain_contrasts, keep=False)
                reading["retain_margins"] = [round(float(m), 5) for m in margin]
        return reading

    def _best_rival(self, images: torch.Tensor, rivals: list[list[str]], keep: bool = True) -> torch.Tensor:
        """max_k A(x_i, rival_ik) per image (the rivals' captions scored image by image, in one batch)."""
        sizes = [len(r) for r in rivals]
        flat = [c for r in rivals for c in r]
        scores = self.ctx.scorer.score(images.repeat_interleave(torch.tensor(sizes, device=images.device), dim=0), flat, keep)
        return torch.stack([s.max() for s in scores.split(sizes)])

    def calibrate(self) -> dict:
        """Read the original model (call before the first update); returns its reading."""
        self.reference = self.read()
        return self.reference

    @property
    def usable(self) -> bool:
        return self.reference is not None and self.reference["present"] >= MIN_PRESENT_BEFORE

    def probe(self) -> dict:
        """The current model's reading, its retain drift, whether it reads forgotten, and whether the run may
        stop here (`stop_patience` forgotten readings in a row)."""
        common = self.ctx.common
        reading = self.read()
        before = self.reference.get("retain_alignment")
        drift = 0.0 if before is None else 1 - reading["retain_alignment"] / before
        reading["retain_drift"] = drift
        if "retain_margins" in reading:
            reading["retain_read"] = _read_own(reading)
            intact = reading["retain_read"] >= _read_own(self.reference) - common.stop_retain_drop - 1e-9
        else:
            intact = drift <= common.stop_retain_drift
        reading["forgotten"] = bool(self.usable and reading["present"] <= common.stop_forget and intact)
        self.streak = self.streak + 1 if reading["forgotten"] else 0
        reading["stop"] = self.streak >= common.stop_patience
        return reading
