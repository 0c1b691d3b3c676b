"""TRUST: dynamic concept neurons from alignment saliency, CIP / CSR regularisers, selective updates.

Per step (see ../shared/TRUST_METHOD.md and docs/method.md):
 1. saliency: a short DDIM trajectory for a target prompt with CFG, decode, score alignment with the
    scorer, back-propagate to the attn2 q/k/v weights (only through the last `backprop_depth` steps);
 2. concept neurons: rows with z-scored mean |grad| > xi, re-estimated every `mask_every` steps
    (0 = a static mask estimated once);
 3. loss: L_prev + alpha * L_retain + s * {CIP | CSR | none}, s = beta * |grad L_prev| / |grad L_reg|
    on the masked rows (beta is the regulariser's share of the update, whatever its raw scale);
 4. only masked rows move: the gradient is masked and unmasked rows are restored after Adam's step,
    so Adam's momentum cannot leak into them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.evaluation.protocol import run_rng_seed
from trust_unlearn.methods.base import RunContext, gradients
from trust_unlearn.neurons import (Mask, concept_neuron_masks, contrastive_neuron_masks, cross_attention_parameters,
                                  jaccard, mask_size)

REGULARISERS = ("cip", "csr", "none")
OBJECTIVES = ("guided", "conditional")


@dataclass
class TrustConfig:
    xi: float = 2.0  # z-score threshold for concept neurons
    beta: float = 0.2  # regulariser's share of the update norm (scale-free; see apply_gradients)
    alpha: float = 2.0  # retain-term weight (both terms are relative under the guided objective)
    reg: str = "cip"  # cip | csr | none
    # L_prev on the guided prediction, relative per sample (see RunContext.preservation_loss); on testbed v3
    # SalUn's "conditional" form lets other shapes drift (circle: retain 93.8 -> 89.6 %, guided 95.8 %)
    objective: str = "guided"
    mask_every: int = 1  # re-estimate the mask every k steps; 0 = static (estimated once)
    saliency_steps: int = 10  # DDIM steps of the saliency trajectory
    backprop_depth: int = 2  # back-propagate through the last K denoising steps only
    saliency_batch: int = 2  # trajectories per saliency estimate
    csr_batch: int = 2  # samples for the Hutchinson probe
    saliency_resolution: int | None = None  # pixels of the saliency trajectory (None: the model's); lower = cheaper
    # every k-th mask refresh, a second saliency estimate at the same weights from its own RNG stream: the
    # Jaccard of the two masks (log: jaccard_floor) is the estimate's noise floor under the step-to-step
    # drift (jaccard_prev). Costs one more saliency estimate per measured refresh; 0 = never.
    noise_floor_every: int = 0
    # concept neurons for combinations and contexts: subtract this share of the retain prompts' saliency (one
    # more saliency estimate per refresh) before the z-score, so rows that serve "red" or "circle" in general
    # are left alone (neurons.contrastive_neuron_masks); 0 = plain TRUST
    contrast: float = 0.0

    def validate(self) -> "TrustConfig":
        if self.reg not in REGULARISERS:
            raise UserError(f"unknown regulariser {self.reg!r}; choose one of {', '.join(REGULARISERS)}")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.mask_every < 0 or self.saliency_steps < 1 or not 1 <= self.backprop_depth <= self.saliency_steps:
            raise UserError("need mask_every >= 0 and 1 <= backprop_depth <= saliency_steps")
        if self.noise_floor_every < 0:
            raise UserError(f"noise_floor_every must be >= 0 (0: never), not {self.noise_floor_every}")
        if self.contrast < 0:
            raise UserError(f"contrast must be >= 0 (0: plain TRUST), not {self.contrast}")
        return self


def cip_penalty(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], mask: Mask) -> torch.Tensor:
    """L1 relaxation of the count of high-influence masked parameters: sum_{i in mask} |theta_i * g_i|."""
    total = None
    for name, p in params.items():
        term = (p * grads[name].detach()).abs()[mask[name]].sum()
        total = term if total is None else total + term
    return total


def csr_penalty(output_fn, params: dict[str, torch.Tensor], mask: Mask, generator: torch.Generator) -> torch.Tensor:
    """Hutchinson estimate of the masked Gauss-Newton trace: E_v ||m * d(v . eps)/d theta||^2, v Rademacher.

    Needs double backward, so the forward runs under the math SDPA kernel (fused kernels have none).
    """
    with sdpa_kernel(SDPBackend.MATH):
        out = output_fn()
        v = torch.randint(0, 2, out.shape, generator=generator).to(out) * 2 - 1
        names = list(params)
        grads = torch.autograd.grad((v * out).sum() / out.shape[0], [params[n] for n in names], create_graph=True)
        return sum((g * mask[n].unsqueeze(1).to(g)).pow(2).sum() for n, g in zip(names, grads))


@register_method("trust")
class Trust:
    config_cls = TrustConfig
    needs_scorer = True  # the engine loads the alignment scorer for methods that say so
    averages_gradients = True  # apply_gradients all-reduces before the regulariser's scale is computed

    def __init__(self, ctx: RunContext, cfg: TrustConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.params = cross_attention_parameters(ctx.unet)
        ctx.unet.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params.values(), lr=ctx.common.lr)
        self.mask: Mask | None = None
        self.saliency_grads: dict[str, torch.Tensor] | None = None
        self.floor_rng = torch.Generator().manual_seed(run_rng_seed(ctx.common.seed, stream=1))
        if cfg.contrast and not ctx.spec.retains:
            raise UserError("contrast > 0 subtracts the retain prompts' saliency, but the concept has no retain "
                            "prompts; give --retain prompts (or a concept file with retains), or set contrast=0")

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    # ------------------------------------------------------------------ saliency
    def saliency_gradients(self) -> dict[str, torch.Tensor]:
        """g = dA/d theta_CA, A = alignment of images generated for target prompts with those prompts."""
        return self.alignment_gradients(self.ctx.spec.targets)

    def alignment_gradients(self, pool: list[str]) -> dict[str, torch.Tensor]:
        """dA/d theta_CA for `saliency_batch` prompts drawn from `pool`, each scored against its own prompt."""
        ctx, cfg = self.ctx, self.cfg
        picks = torch.randint(0, len(pool), (cfg.saliency_batch,), generator=ctx.rng).tolist()
        noise = self.saliency_noise(len(picks))
        prompts = [pool[i] for i in ctx.shard(picks)]
        cond = torch.cat([ctx.uncond.expand(len(prompts), -1, -1), ctx.text(prompts)])
        with ctx.timer("saliency_trajectory"):
            latents = self.saliency_trajectory(cond, noise)
        with ctx.timer("saliency_decode_score"):
            alignment = self._score(ctx.decode(latents), prompts)
        with ctx.timer("saliency_backward"):
            grads = gradients(alignment, self.params)
            self.ctx.average(list(grads.values()))  # every rank selects the same neurons
        return grads

    def saliency_noise(self, n: int) -> torch.Tensor:
        """Starting noise of n saliency trajectories (the global batch, from the run's RNG)."""
        ctx = self.ctx
        size = (self.cfg.saliency_resolution or ctx.model.resolution) // ctx.pipe.vae_scale_factor
        return torch.randn((n, ctx.unet.config.in_channels, size, size), generator=ctx.rng)

    def saliency_trajectory(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The last latents of the short guided DDIM trajectory from this rank's shard of `noise` (cond: uncond
        then cond states), differentiable through its last `backprop_depth` steps only."""
        ctx, cfg = self.ctx, self.cfg
        sched = ctx.ddim(cfg.saliency_steps)
        latents = ctx.shard(noise).to(ctx.device) * sched.init_noise_sigma
        n = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            with torch.set_grad_enabled(i >= n - cfg.backprop_depth):
                inp = sched.scale_model_input(torch.cat([latents, latents]), t)
                eps_u, eps_c = ctx.eps(inp, t, cond).chunk(2)
                latents = sched.step(eps_u + ctx.guidance * (eps_c - eps_u), t, latents).prev_sample
        return latents

    def _score(self, images, prompts):
        return self.ctx.scorer.score(images, prompts).mean()

    # ------------------------------------------------------------------ one step
    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        log = {}
        if self.mask is None or (cfg.mask_every > 0 and k % cfg.mask_every == 0):
            self.refresh_mask(k)
            log["mask_updated"] = True
            if cfg.noise_floor_every and (k // max(1, cfg.mask_every)) % cfg.noise_floor_every == 0:
                with ctx.timer("noise_floor"):
                    log["jaccard_floor"] = jaccard(self.mask, self.independent_mask())
        with ctx.timer("loss_forward"):
            forget, retain = ctx.preservation_loss(ctx.common.batch, cfg.objective)
            base = forget + cfg.alpha * retain
        with ctx.timer("reg_forward"):
            reg = self.regulariser()
        if not (torch.isfinite(base) and torch.isfinite(reg)):
            bad = base if not torch.isfinite(base) else reg
            raise UserError(f"the loss became {bad.item()} at step {k}; lower --lr or --beta "
                            "(the input model is untouched; --resume restarts from the last checkpoint)")
        scale = self.apply_gradients(base, reg)
        with ctx.timer("update"):
            self.selective_update()
        log.update(loss=(base + scale * reg).item(), forget_loss=forget.item(), retain_loss=retain.item(),
                   reg_loss=reg.item(), reg_scale=scale)
        return log

    def refresh_mask(self, k: int) -> None:
        """Re-locate the concept neurons from fresh alignment saliency."""
        self.saliency_grads = self.saliency_gradients()
        self.mask = self.concept_neurons(self.saliency_grads)
        if k == 0 and mask_size(self.mask) == 0:
            raise UserError(f"xi={self.cfg.xi} selects no concept neuron; lower --xi (the default is 2.0)")

    def independent_mask(self) -> Mask:
        """The mask of a second saliency estimate at the same weights, drawn from the noise-floor RNG stream
        (the run's own stream is left untouched, so measuring the floor does not change the run)."""
        run_rng, self.ctx.rng = self.ctx.rng, self.floor_rng
        try:
            return self.concept_neurons(self.saliency_gradients())
        finally:
            self.ctx.rng = run_rng

    def concept_neurons(self, grads: dict[str, torch.Tensor]) -> Mask:
        """The z-scored rows of the target saliency, or with `contrast` of its excess over the retain prompts'."""
        if not self.cfg.contrast:
            return concept_neuron_masks(grads, self.cfg.xi)
        with self.ctx.timer("saliency_contrast"):
            retain = self.alignment_gradients(self.ctx.spec.retains)
        return contrastive_neuron_masks(grads, retain, self.cfg.contrast, self.cfg.xi)

    def regulariser(self) -> torch.Tensor:
        ctx, cfg = self.ctx, self.cfg
        if cfg.reg == "cip" and cfg.beta > 0:
            return cip_penalty(self.params, self.saliency_grads, self.mask)
        if cfg.reg == "csr" and cfg.beta > 0:
            rows, z_t, t = ctx.noised(ctx.target_latents, cfg.csr_batch)
            cond = ctx.text([ctx.spec.targets[i] for i in ctx.target_idx[rows].tolist()])
            return csr_penalty(lambda: ctx.eps(z_t, t, cond), self.params, self.mask, ctx.rng)
        return torch.zeros((), device=ctx.device)

    def apply_gradients(self, base: torch.Tensor, reg: torch.Tensor) -> float:
        """p.grad = grad(base) + s * grad(reg), with s = beta * |grad base| / |grad reg| over the masked rows.

        CIP's and CSR's raw gradients are 40x and 10^4x the preservation gradient on the testbed (and
        their scale depends on the model), so beta is made scale-free: the regulariser's share of the
        update's norm. Returns s, so the effective loss base + s * reg is logged.
        """
        names = list(self.params)
        params = [self.params[n] for n in names]

        def grads(loss):
            if not loss.requires_grad:
                return [torch.zeros_like(p) for p in params]
            out = torch.autograd.grad(loss, params, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]

        def masked_norm(gs):
            return torch.sqrt(sum((g[self.mask[n]] ** 2).sum() for g, n in zip(gs, names)))

        with self.ctx.timer("backward"):
            g_base = grads(base)
            self.ctx.average(g_base)  # data parallel: the scale is computed from the global gradients
        scale = 0.0
        if reg.requires_grad:
            with self.ctx.timer("reg_backward"):  # CSR: the double backward
                g_reg = grads(reg)
                self.ctx.average(g_reg)
            n_reg = masked_norm(g_reg)
            if n_reg > 0:
                scale = float(self.cfg.beta * masked_norm(g_base) / n_reg)
                g_base = [a + scale * b for a, b in zip(g_base, g_reg)]
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, g_base):
            p.grad = g.detach()
        return scale

    def selective_update(self) -> None:
        """theta <- theta - Adam(m * grad L), with rows outside the mask restored bit for bit."""
        before = {}
        for name, p in self.params.items():
            rows = self.mask[name]
            if p.grad is not None:
                p.grad[~rows] = 0
            before[name] = p.detach().clone()
        self.optimizer.step()
        with torch.no_grad():
            for name, p in self.params.items():
                keep = ~self.mask[name]
                p[keep] = before[name][keep]

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "mask": self.mask,
            "saliency_grads": self.saliency_grads,
            "floor_rng": self.floor_rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.mask, self.saliency_grads = state["mask"], state["saliency_grads"]
        self.floor_rng.set_state(state["floor_rng"])
