"""ConceptPrune (Chavhan et al., 2024): training-free; prune the FFN neurons skilled for the concept.

A neuron is one hidden unit of a transformer block's feed-forward network: one GEGLU output, i.e.
one *input* column j of `ff.net.2` (W: dim x inner). Its WANDA importance (Sun et al.) at a timestep
is  S_j = ||X_j||_2 * sum_i |W_ij|,  X_j its activations over tokens and images (the conditional half
of the CFG batch). ConceptPrune compares target prompts with base prompts (here the anchors: the same
captions with the concept swapped out): per layer and per timestep the neurons with the largest
S_j(target) - S_j(base) form the top `top_k` fraction; the union over the first `early_steps`
denoising steps is pruned (column j of `ff.net.2.weight` set to zero). All in `step(0)`; run it with
`--steps 1` (later steps do nothing).

`.mask` holds, per `ff.net.2.weight`, a boolean over its input neurons (columns, not rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext


@dataclass
class ConceptPruneConfig:
    top_k: float = 0.01  # fraction of neurons per layer and timestep (ConceptPrune: 1 %)
    min_per_layer: int = 1  # at least this many per layer and timestep (1 % of a small FFN can be 0)
    early_steps: int = 10  # union over the first denoising steps (ConceptPrune: 10 of 50)
    num_steps: int | None = None  # DDIM steps of the trajectory (model default)
    prompts: int = 8  # trajectories per prompt set (target, base)

    def validate(self) -> "ConceptPruneConfig":
        if not 0 < self.top_k <= 1:
            raise UserError("top_k must be in (0, 1]: the fraction of FFN neurons per layer and timestep")
        if self.early_steps < 1 or self.prompts < 1 or self.min_per_layer < 0:
            raise UserError("need early_steps >= 1, prompts >= 1 and min_per_layer >= 0")
        return self


def ffn_output_layers(unet) -> dict[str, torch.nn.Linear]:
    """{parameter name: module} of every transformer block's second FFN layer (`ff.net.2`)."""
    return {f"{n}.weight": m for n, m in unet.named_modules() if n.endswith("ff.net.2") and isinstance(m, torch.nn.Linear)}


@register_method("conceptprune")
class ConceptPrune:
    config_cls = ConceptPruneConfig

    def __init__(self, ctx: RunContext, cfg: ConceptPruneConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.layers = ffn_output_layers(ctx.unet)
        if not self.layers:
            raise UserError("conceptprune: this UNet has no transformer feed-forward layers (ff.net.2)")
        self.params = {n: m.weight for n, m in self.layers.items()}
        ctx.unet.requires_grad_(False)
        self.mask: dict[str, torch.Tensor] | None = None

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    @torch.no_grad()
    def activation_norms(self, prompts: list[str], seeds_from: int) -> list[dict[str, torch.Tensor]]:
        """Per early timestep, per layer: ||X_j||_2 over the conditional batch's tokens and images."""
        ctx, cfg = self.ctx, self.cfg
        sq: dict[str, torch.Tensor] = {}
        hooks = []
        for name, module in self.layers.items():
            def hook(mod, inputs, name=name):
                x = inputs[0]
                x = x[x.shape[0] // 2:]  # conditional half of [uncond; cond]
                s = x.pow(2).flatten(0, -2).sum(0)
                sq[name] = sq[name] + s if name in sq else s
            hooks.append(module.register_forward_pre_hook(hook))
        try:
            n = len(prompts)
            sched = ctx.ddim(cfg.num_steps or ctx.common.cache_steps or ctx.model.num_inference_steps)
            size = ctx.model.resolution // ctx.pipe.vae_scale_factor
            gen = torch.Generator().manual_seed(seeds_from)
            latents = torch.randn((n, ctx.unet.config.in_channels, size, size), generator=gen).to(ctx.device)
            latents = latents * sched.init_noise_sigma
            cond = torch.cat([ctx.uncond.expand(n, -1, -1), ctx.text(prompts)])
            per_step = []
            for t in sched.timesteps[: cfg.early_steps]:
                sq.clear()
                inp = sched.scale_model_input(torch.cat([latents, latents]), t)
                eps_u, eps_c = ctx.eps(inp, t, cond).chunk(2)
                latents = sched.step(eps_u + ctx.guidance * (eps_c - eps_u), t, latents).prev_sample
                per_step.append({k: v.sqrt() for k, v in sq.items()})
        finally:
            for h in hooks:
                h.remove()
        return per_step

    def wanda(self, norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """S_j = ||X_j|| * sum_i |W_ij| (WANDA summed over the neuron's outgoing weights)."""
        return {n: norms[n] * self.params[n].detach().abs().sum(0) for n in self.params}

    def select(self) -> dict[str, torch.Tensor]:
        ctx, cfg = self.ctx, self.cfg
        picks = [i % len(ctx.spec.targets) for i in range(cfg.prompts)]
        seed = ctx.common.seed * 1_000_003 + 7
        target = self.activation_norms([ctx.spec.targets[i] for i in picks], seed)
        base = self.activation_norms([ctx.spec.anchors[i] for i in picks], seed)  # same noise
        mask = {n: torch.zeros(p.shape[1], dtype=torch.bool) for n, p in self.params.items()}
        for t_norms, b_norms in zip(target, base):
            st, sb = self.wanda(t_norms), self.wanda(b_norms)
            for n in self.params:
                diff = st[n] - sb[n]
                k = min(len(diff), max(cfg.min_per_layer, int(cfg.top_k * len(diff))))
                if k:
                    mask[n][torch.topk(diff, k).indices] = True
        return mask

    def step(self, k: int) -> dict:
        if self.mask is not None:
            return {"pruned": False}
        self.mask = self.select()
        with torch.no_grad():
            for n, p in self.params.items():
                p[:, self.mask[n]] = 0
        total = sum(len(m) for m in self.mask.values())
        size = sum(int(m.sum()) for m in self.mask.values())
        return {"pruned": True, "mask_updated": True, "pruned_neurons": size, "ffn_neurons": total}

    def state_dict(self) -> dict:
        return {"mask": self.mask}

    def load_state_dict(self, state: dict) -> None:
        self.mask = state["mask"]
