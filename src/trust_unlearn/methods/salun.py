"""SalUn (Fan et al., ICLR 2024): one static weight-saliency mask, then a masked forget/retain loss.

1. Mask (once, before step 0's update), as SalUn's `generate_mask`: over one pass through the forget
   set (the original model's images of the target prompts, with their prompts) the gradients of
   -||eps - ((1 + c) eps_theta(z_t, t, c_f) - c eps_theta(z_t, t, ""))||^2 are summed, then |.| is
   taken; the top `threshold` fraction of all UNet weights by that score (one global ranking, exactly
   int(threshold * #weights) of them) is trainable.
2. Steps, as SalUn's `random_label.py` / `nsfw_removal.py`:
   ||eps_theta(z_t, t, c_f) - sg(eps_theta(z_t, t, c_a))||^2 on forget images (the anchor's prediction
   of the *current* model), + alpha * ||eps_theta(z_t, t, c_r) - eps||^2, the plain diffusion loss on
   the original model's retain images; the gradient is masked.

The mask is weight-level, not neuron-level, so it is not exposed as `.mask` (the engine's neuron
history); its size is logged as `mask_elements` / `mask_fraction`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext, gradients


@dataclass
class SalunConfig:
    threshold: float = 0.5  # fraction of UNet weights in the mask (SalUn: 0.5)
    alpha: float = 0.1  # retain-term weight (SalUn's nsfw_removal default; its class-forgetting runs use 0.5)
    mask_guidance: float | None = None  # c of the mask's guided prediction (SalUn: 7.5, SD's CFG; default: the run's)
    mask_batches: int | None = None  # forget batches for the mask: None = all of them (SalUn); N = the first N

    def validate(self) -> "SalunConfig":
        if not 0 < self.threshold <= 1:
            raise UserError("threshold must be in (0, 1]: the fraction of weights SalUn may change")
        if self.mask_batches is not None and self.mask_batches < 1:
            raise UserError("mask_batches must be at least 1 (or unset: the whole forget set)")
        return self


def global_top_fraction(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Element masks keeping exactly int(fraction * #elements) highest scores, ranked over all tensors together."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, int(fraction * flat.numel()), sorted=False).indices] = True
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


@register_method("salun")
class SalUn:
    config_cls = SalunConfig

    def __init__(self, ctx: RunContext, cfg: SalunConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.params = dict(ctx.unet.named_parameters())
        ctx.unet.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params.values(), lr=ctx.common.lr)
        self.weight_mask: dict[str, torch.Tensor] | None = None

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    def mask_loss(self, rows: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """SalUn's forget loss for the mask: minus the diffusion loss of the guided prediction."""
        ctx = self.ctx
        c = ctx.guidance if self.cfg.mask_guidance is None else self.cfg.mask_guidance
        cond = ctx.text([ctx.spec.targets[i] for i in ctx.target_idx[rows].tolist()])
        both = torch.cat([cond, ctx.uncond.expand(len(cond), -1, -1)])
        e_c, e_u = ctx.eps(torch.cat([z_t, z_t]), torch.cat([t, t]), both).chunk(2)
        return -F.mse_loss((1 + c) * e_c - c * e_u, noise)

    def forget_gradients(self) -> dict[str, torch.Tensor]:
        """sum over the forget set's batches of d(mask loss)/d theta (signed; |.| is taken afterwards)."""
        ctx, b = self.ctx, self.ctx.common.batch
        n = len(ctx.target_latents)
        batches = range(0, n, b)[: self.cfg.mask_batches]
        total = {name: torch.zeros_like(p) for name, p in self.params.items()}
        for start in batches:
            rows = torch.arange(start, min(start + b, n))
            if len(rows) % ctx.world:  # data parallel: a last, smaller batch the ranks cannot share is left out
                continue
            t = torch.randint(0, ctx.noise_scheduler.config.num_train_timesteps, (len(rows),), generator=ctx.rng)
            noise = torch.randn(ctx.target_latents[rows].shape, generator=ctx.rng)
            rows, t, noise = ctx.shard(rows), ctx.shard(t).to(ctx.device), ctx.shard(noise).to(ctx.target_latents)
            z_t = ctx.noise_scheduler.add_noise(ctx.target_latents[rows], noise, t)
            grads = gradients(self.mask_loss(rows, z_t, t, noise), self.params)
            ctx.average(list(grads.values()))  # data parallel: every rank builds the same mask
            for name, g in grads.items():
                total[name] += g
        return total

    def loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(forget, retain): the forget images' prediction moved to the anchor's, retain images' diffusion loss."""
        ctx, b = self.ctx, self.ctx.common.batch
        rows, z_t, t = ctx.noised(ctx.target_latents, b)
        idx = ctx.target_idx[rows].tolist()
        with torch.no_grad():
            pseudo = ctx.eps(z_t, t, ctx.text([ctx.spec.anchors[i] for i in idx]))
        forget = F.mse_loss(ctx.eps(z_t, t, ctx.text([ctx.spec.targets[i] for i in idx])), pseudo)
        if ctx.retain_latents is None:
            return forget, torch.zeros((), device=ctx.device)
        rows, z_t, t, noise = ctx._draw(ctx.retain_latents, b)
        cond = ctx.text([ctx.spec.retains[i] for i in ctx.retain_idx[rows].tolist()])
        return forget, F.mse_loss(ctx.eps(z_t, t, cond), noise)

    def step(self, k: int) -> dict:
        cfg = self.cfg
        log = {}
        if self.weight_mask is None:
            scores = {n: g.abs() for n, g in self.forget_gradients().items()}
            self.weight_mask = global_top_fraction(scores, cfg.threshold)
            log["mask_updated"] = True
        forget, retain = self.loss()
        loss = forget + cfg.alpha * retain
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {k}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.weight_mask[n])
        # a static mask and no weight decay: Adam's moments stay exactly zero outside it
        self.optimizer.step()
        elements = sum(int(m.sum()) for m in self.weight_mask.values())
        total = sum(m.numel() for m in self.weight_mask.values())
        log.update(loss=loss.item(), forget_loss=forget.item(), retain_loss=retain.item(),
                   mask_elements=elements, mask_fraction=elements / total)
        return log

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "weight_mask": self.weight_mask}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.weight_mask = state["weight_mask"]
