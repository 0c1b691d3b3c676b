"""Stop when forgotten: end a run once the concept is gone and retain is intact, as the alignment scorer reads it.

Every `probe_every` steps the current model generates a few probe images (training-range seeds, the
model's own sampler) for target prompts and for retain prompts, and the run's alignment scorer A reads
them -- the signal TRUST already follows (for a real SD model, CLIP). Never the evaluation judge: the
judge grades the result and must not steer it.

  concept present in a target probe x of prompt c, anchor a:  A(x, c) > A(x, a)
  retain drift:  1 - mean_r A(x_r, c_r) / mean_r A0(x_r, c_r)   (A0: the original model, same seeds)

The run stops at the first probe with present share <= stop_forget and retain drift <= stop_retain_drift,
so `--steps` is a maximum. If the scorer cannot tell the concept from its anchor on the original model
(present share < 1/2 before training) the rule says so and never stops the run.
"""
from __future__ import annotations

import torch

from trust_unlearn.evaluation.protocol import probe_seeds
from trust_unlearn.pipeline import generate

MIN_PRESENT_BEFORE = 0.5  # below this the scorer cannot read the concept: the rule would stop on noise


class StoppingRule:
    """Probe readings of the current model, against the original's on the same seeds."""

    def __init__(self, ctx, probes: int, stop_forget: float, stop_retain_drift: float, sampler_steps: int):
        self.ctx, self.stop_forget, self.stop_retain_drift = ctx, stop_forget, stop_retain_drift
        self.sampler_steps = sampler_steps
        spec = ctx.spec
        self.targets = [k % len(spec.targets) for k in range(probes)]
        self.retains = [spec.retains[k % len(spec.retains)] for k in range(probes)] if spec.retains else []
        self.seeds = probe_seeds(ctx.common.seed, probes + len(self.retains))
        self.reference: dict | None = None  # the original model's reading (set by `calibrate`)

    @torch.no_grad()
    def read(self) -> dict:
        """present: share of target probes read as the concept; retain_alignment: mean A over retain probes."""
        ctx, spec = self.ctx, self.ctx.spec
        targets = [spec.targets[i] for i in self.targets]
        anchors = [spec.anchors[i] for i in self.targets]
        images = generate(ctx.model, targets + self.retains, self.seeds, num_inference_steps=self.sampler_steps,
                          show_progress=False).to(ctx.device)
        n = len(targets)
        margin = ctx.scorer.score(images[:n], targets) - ctx.scorer.score(images[:n], anchors)
        reading = {"present": float((margin > 0).float().mean())}
        if self.retains:
            reading["retain_alignment"] = float(ctx.scorer.score(images[n:], self.retains).mean())
        return reading

    def calibrate(self) -> dict:
        """Read the original model (call before the first update); returns its reading."""
        self.reference = self.read()
        return self.reference

    @property
    def usable(self) -> bool:
        return self.reference is not None and self.reference["present"] >= MIN_PRESENT_BEFORE

    def probe(self) -> dict:
        """The current model's reading, its retain drift, and whether the run may stop here."""
        reading = self.read()
        before = self.reference.get("retain_alignment")
        drift = 0.0 if before is None else 1 - reading["retain_alignment"] / before
        reading["retain_drift"] = drift
        reading["forgotten"] = bool(self.usable and reading["present"] <= self.stop_forget
                                    and drift <= self.stop_retain_drift)
        return reading
