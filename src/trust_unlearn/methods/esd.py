"""ESD (Gandikota et al., 2023): erase a concept by fine-tuning towards negative guidance.

Target for the trained model on the concept prompt c:
    eps_theta(x_t, c)  ->  eps_theta0(x_t) - eta * (eps_theta0(x_t, c) - eps_theta0(x_t))
ESD-x trains only the text cross-attention (`attn2`, every projection); ESD-u trains everything
else except the time embedding and the output layers (the paper's `noxattn`).

x_t comes, as in the ESD code, from a partial DDIM trajectory of the model being trained, run with
classifier-free guidance on the concept prompt, stopped at a random step; the DDPM timestep is drawn
inside that DDIM step's interval. `xt="cache"` instead noises the original model's cached images
(cheaper, what SalUn/TRUST use). See docs/baselines.md for defaults and their scaling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext

XT_SOURCES = ("sample", "cache")
# parameters ESD-u leaves alone besides attn2 (LDM `time_embed`, `out.`)
_ESD_U_EXCLUDE = ("time_embedding.", "time_proj.", "conv_out.", "conv_norm_out.")


@dataclass
class EsdConfig:
    negative_guidance: float = 1.0  # eta (ESD default 1.0)
    xt: str = "sample"  # sample: partial DDIM of the trained model (ESD); cache: noised original images
    ddim_steps: int = 10  # DDIM steps of the partial trajectory (ESD: 50; scaled to the testbed)
    start_guidance: float | None = None  # CFG of that trajectory (ESD: 3.0; default: the model's)

    def validate(self) -> "EsdConfig":
        if self.xt not in XT_SOURCES:
            raise UserError(f"unknown xt source {self.xt!r}; choose one of {', '.join(XT_SOURCES)}")
        if self.ddim_steps < 1:
            raise UserError("ddim_steps must be at least 1")
        return self


def esd_x_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """Every parameter of the text cross-attention blocks (ESD's `xattn`)."""
    return {n: p for n, p in unet.named_parameters() if ".attn2." in n}


def esd_u_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """Everything but cross-attention, time embedding and output layers (ESD's `noxattn`)."""
    return {n: p for n, p in unet.named_parameters() if ".attn2." not in n and not n.startswith(_ESD_U_EXCLUDE)}


class _Esd:
    config_cls = EsdConfig
    select = staticmethod(esd_x_parameters)

    def __init__(self, ctx: RunContext, cfg: EsdConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.params = self.select(ctx.unet)
        if not self.params:
            raise UserError(f"{self.name}: this UNet has no parameters of the kind it trains")
        ctx.unet.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params.values(), lr=ctx.common.lr)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    @torch.no_grad()
    def _sample_xt(self, prompts: list[str]):
        """Partial DDIM trajectory of the current model (CFG on the concept prompt) -> (x_t, t)."""
        ctx, cfg = self.ctx, self.cfg
        n = len(prompts)
        sched = ctx.ddim(cfg.ddim_steps)
        size = ctx.model.resolution // ctx.pipe.vae_scale_factor
        latents = torch.randn((n, ctx.unet.config.in_channels, size, size), generator=ctx.rng).to(ctx.device)
        latents = latents * sched.init_noise_sigma
        stop = int(torch.randint(0, cfg.ddim_steps, (1,), generator=ctx.rng))
        cond = torch.cat([ctx.uncond.expand(n, -1, -1), ctx.text(prompts)])
        guidance = ctx.guidance if cfg.start_guidance is None else cfg.start_guidance
        for t in sched.timesteps[:stop]:
            inp = sched.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = ctx.eps(inp, t, cond).chunk(2)
            latents = sched.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        t_lo = int(sched.timesteps[stop])
        width = max(1, ctx.noise_scheduler.config.num_train_timesteps // cfg.ddim_steps)
        t_hi = min(ctx.noise_scheduler.config.num_train_timesteps - 1, t_lo + width - 1)
        t = torch.randint(t_lo, t_hi + 1, (n,), generator=ctx.rng).to(ctx.device)
        return latents, t

    def step(self, k: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        b = ctx.common.batch
        if cfg.xt == "sample":
            picks = torch.randint(0, len(ctx.spec.targets), (b,), generator=ctx.rng).tolist()
            prompts = [ctx.spec.targets[i] for i in picks]
            z_t, t = self._sample_xt(prompts)
        else:
            rows, z_t, t = ctx.noised(ctx.target_latents, b)
            prompts = [ctx.spec.targets[i] for i in ctx.target_idx[rows].tolist()]
        cond = ctx.text(prompts)
        e_0 = ctx.eps(z_t, t, ctx.uncond.expand(len(prompts), -1, -1), original=True)
        e_p = ctx.eps(z_t, t, cond, original=True)
        target = e_0 - cfg.negative_guidance * (e_p - e_0)
        loss = F.mse_loss(ctx.eps(z_t, t, cond), target)
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {k}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


@register_method("esd-x")
class EsdX(_Esd):
    select = staticmethod(esd_x_parameters)


@register_method("esd-u")
class EsdU(_Esd):
    select = staticmethod(esd_u_parameters)
