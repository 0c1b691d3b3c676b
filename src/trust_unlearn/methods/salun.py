"""SalUn (Fan et al., ICLR 2024): one static weight-saliency mask, then L_prev on the masked weights.

1. Mask (once, before step 0's update): the gradient of the forget loss, the plain diffusion loss
   ||eps_theta(z_t, t, c_f) - eps||^2 on images the original model generates for the target prompts,
   accumulated over `mask_batches` batches; the top `threshold` fraction of |grad| over *all* UNet
   weights (one global threshold, weight-level, as in SalUn's `generate_mask`) is trainable.
2. Steps: L_prev = ||eps_theta(z_t, t, c_f) - sg(eps_theta0(z_t, t, c_a))||^2
   + alpha * ||eps_theta(z_t, t, c_r) - eps_theta0(z_t, t, c_r)||^2, the gradient masked.

The mask is weight-level, not neuron-level, so it is not exposed as `.mask` (the engine's neuron
history); its size is logged as `mask_elements` / `mask_fraction`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext, gradients


@dataclass
class SalunConfig:
    threshold: float = 0.5  # fraction of UNet weights in the mask (SalUn: 0.5)
    alpha: float = 0.1  # retain-term weight
    mask_batches: int = 4  # batches of the forget loss whose gradients build the mask

    def validate(self) -> "SalunConfig":
        if not 0 < self.threshold <= 1:
            raise UserError("threshold must be in (0, 1]: the fraction of weights SalUn may change")
        if self.mask_batches < 1:
            raise UserError("mask_batches must be at least 1")
        return self


def global_top_fraction(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Element masks keeping the `fraction` highest scores over all tensors together (ties kept)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = max(1, int(round(fraction * flat.numel())))
    cut = torch.topk(flat, keep, sorted=False).values.min()
    return {n: s >= cut for n, s in scores.items()}


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

    def forget_gradients(self) -> dict[str, torch.Tensor]:
        """|grad| of the diffusion loss on the original model's target images, summed over batches."""
        ctx = self.ctx
        total = {n: torch.zeros_like(p) for n, p in self.params.items()}
        for _ in range(self.cfg.mask_batches):
            grads = gradients(ctx.diffusion_loss(ctx.common.batch), self.params)
            ctx.average(list(grads.values()))  # data parallel: every rank builds the same mask
            for n, g in grads.items():
                total[n] += g.abs()
        return total

    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        log = {}
        if self.weight_mask is None:
            self.weight_mask = global_top_fraction(self.forget_gradients(), cfg.threshold)
            log["mask_updated"] = True
        forget, retain = ctx.preservation_loss(ctx.common.batch)
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
