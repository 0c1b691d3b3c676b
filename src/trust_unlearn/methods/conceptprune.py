"""ConceptPrune (Chavhan et al., 2024): training-free; prune the FFN weights skilled for the concept.

In every transformer block's second FFN layer `ff.net.2` (W: dim x inner), the WANDA score (Sun et
al.) of weight W_ij at a denoising step is  S_ij = |W_ij| * ||X_j||_2,  X_j the layer's j-th input
(the GEGLU output) over every token of every image, both halves of the CFG batch, each token's
activation vector first L2-normalised. Target prompts and base prompts (the spec's anchors: the same
captions with the concept swapped out; or "") run from the same initial noise. As ConceptPrune's
`wanda.py`: per output row i, the weights among the top `top_k` of S_ij(target) that also score above
S_ij(base) are skilled; `save_union_over_time.py`: the union over the first `early_steps` of 50 DDIM
steps is set to zero. All in `step(0)`; run it with `--steps 1` (later steps do nothing).

The mask is weight-level, so, like SalUn's, it is not exposed as `.mask` (the engine's neuron
history); it is `.weight_mask`, and its size is logged as `mask_elements` / `mask_fraction` (of the
`ff.net.2` weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext

BASES = ("anchors", "empty")


@dataclass
class ConceptPruneConfig:
    # fraction of each row per layer and step (ConceptPrune's skill_ratio: 2 % for objects, 1 % otherwise);
    # default: 2 % when the testbed concept names a shape, else 1 %
    top_k: float | None = None
    min_per_row: int = 1  # at least this many per row (int(top_k * inner) is 0 in a tiny FFN; never binds on SD)
    early_steps: int = 10  # union over the first denoising steps (ConceptPrune: 10)
    num_steps: int = 50  # DDIM steps of the schedule those steps come from (ConceptPrune: the pipeline's 50)
    base: str = "anchors"  # base prompt of each target: its spec anchor, or "" (empty)
    prompts: int | None = None  # (target, base) pairs: None = every target of the spec (ConceptPrune: its prompt list)

    def validate(self) -> "ConceptPruneConfig":
        if self.top_k is not None and not 0 < self.top_k <= 1:
            raise UserError("top_k must be in (0, 1]: the fraction of each FFN row's weights per layer and step")
        if self.early_steps < 1 or self.num_steps < self.early_steps or self.min_per_row < 0:
            raise UserError("need 1 <= early_steps <= num_steps and min_per_row >= 0")
        if self.prompts is not None and self.prompts < 1:
            raise UserError("prompts must be at least 1 (or unset: every target prompt)")
        if self.base not in BASES:
            raise UserError(f"unknown base {self.base!r}; choose one of {', '.join(BASES)}")
        return self


def ffn_output_layers(unet) -> dict[str, torch.nn.Linear]:
    """{parameter name: module} of every transformer block's second FFN layer (`ff.net.2`)."""
    return {f"{n}.weight": m for n, m in unet.named_modules()
            if n.endswith("ff.net.2") and isinstance(m, torch.nn.Linear)}


def skilled_weights(weight: torch.Tensor, norm_target: torch.Tensor, norm_base: torch.Tensor, k: int) -> torch.Tensor:
    """Per output row, the top-k weights by target WANDA score that score higher for the target than the base."""
    s_target = weight.abs() * norm_target
    top = torch.zeros_like(s_target, dtype=torch.bool)
    top.scatter_(1, torch.topk(s_target, k, dim=1).indices, True)
    return top & (s_target > weight.abs() * norm_base)


def default_top_k(world_concept: str | None) -> float:
    """ConceptPrune's skill ratio: 2 % for objects (a shape on the testbed), 1 % for everything else."""
    if world_concept:
        from trust_unlearn.world.concepts import parse_concept

        return 0.02 if "shape" in parse_concept(world_concept).attributes else 0.01
    return 0.01


@register_method("conceptprune")
class ConceptPrune:
    config_cls = ConceptPruneConfig

    def __init__(self, ctx: RunContext, cfg: ConceptPruneConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.layers = ffn_output_layers(ctx.unet)
        if not self.layers:
            raise UserError("conceptprune: this UNet has no transformer feed-forward layers (ff.net.2)")
        self.params = {n: m.weight for n, m in self.layers.items()}
        self.top_k = cfg.top_k if cfg.top_k is not None else default_top_k(ctx.spec.world_concept)
        ctx.unet.requires_grad_(False)
        self.weight_mask: dict[str, torch.Tensor] | None = None

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    @torch.no_grad()
    def activation_norms(self, prompts: list[str], noise: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per early step, per layer: ||X_j||_2 over all tokens (each normalised) of the CFG batch."""
        ctx, cfg = self.ctx, self.cfg
        sched = ctx.ddim(cfg.num_steps)
        steps = sched.timesteps[: cfg.early_steps]
        sq: list[dict[str, torch.Tensor]] = [{} for _ in steps]  # per step: sum over rows of x_j^2

        def hook(inputs, name):
            x = F.normalize(inputs[0].detach().float().flatten(0, -2), dim=1)
            acc[name] = acc.get(name, 0) + x.pow(2).sum(0)

        hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: hook(inp, name))
                 for name, m in self.layers.items()]
        try:
            for i in range(0, len(prompts), 32):
                chunk = prompts[i : i + 32]
                n = len(chunk)
                latents = noise.expand(n, -1, -1, -1).to(ctx.device) * sched.init_noise_sigma
                cond = torch.cat([ctx.uncond.expand(n, -1, -1), ctx.text(chunk)])
                for acc, t in zip(sq, steps):  # rebinding `acc` points the hook at this step's sums
                    inp = sched.scale_model_input(torch.cat([latents, latents]), t)
                    eps_u, eps_c = ctx.eps(inp, t, cond).chunk(2)
                    latents = sched.step(eps_u + ctx.guidance * (eps_c - eps_u), t, latents).prev_sample
        finally:
            for h in hooks:
                h.remove()
        return [{name: v.sqrt() for name, v in step.items()} for step in sq]

    def select(self) -> dict[str, torch.Tensor]:
        ctx, cfg = self.ctx, self.cfg
        pairs = list(zip(ctx.spec.targets, ctx.spec.anchors))
        pairs = [pairs[i % len(pairs)] for i in range(cfg.prompts or len(pairs))]
        size = ctx.model.resolution // ctx.pipe.vae_scale_factor
        # one initial noise for every prompt, as the reference (it re-seeds before each)
        noise = torch.randn((1, ctx.unet.config.in_channels, size, size), generator=ctx.rng)
        target = self.activation_norms([t for t, _ in pairs], noise)
        base = self.activation_norms([a if cfg.base == "anchors" else "" for _, a in pairs], noise)
        mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}
        for t_norms, b_norms in zip(target, base):
            for n, p in self.params.items():
                k = min(p.shape[1], max(cfg.min_per_row, int(self.top_k * p.shape[1])))
                if k:
                    mask[n] |= skilled_weights(p.detach().float(), t_norms[n], b_norms[n], k)
        return mask

    def _log(self, pruned: bool) -> dict:
        elements = sum(int(m.sum()) for m in self.weight_mask.values())
        total = sum(m.numel() for m in self.weight_mask.values())
        return {"pruned": pruned, "mask_elements": elements, "mask_fraction": elements / total}

    def step(self, k: int) -> dict:
        if self.weight_mask is not None:
            return self._log(False)
        self.weight_mask = self.select()
        with torch.no_grad():
            for n, p in self.params.items():
                p[self.weight_mask[n]] = 0
        return {**self._log(True), "mask_updated": True}

    def state_dict(self) -> dict:
        return {"weight_mask": self.weight_mask}

    def load_state_dict(self, state: dict) -> None:
        self.weight_mask = state["weight_mask"]
