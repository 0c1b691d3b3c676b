"""ESD (Gandikota et al., ICCV 2023): erase a concept by fine-tuning towards negative guidance.

The erase prompt c_e is the concept phrase ("circle", "red circle"), not the training captions; the
trained prediction is that of `erase_from` c_f (default c_e), as in ESD's `esd_sd.py`:
    eps_theta(x_t, c_f)  ->  eps_theta0(x_t, c_f) - (1 + eta) * (eps_theta0(x_t, c_e) - eps_theta0(x_t))
With c_f = c_e this is the paper's eps_theta0(x_t) - eta * (eps_theta0(x_t, c_e) - eps_theta0(x_t)); eta is
the paper's (`train-esd.py`) negative guidance, so `esd_sd.py`'s default of 2 is our 1.
ESD-x trains only the text cross-attention (`attn2`, every projection); ESD-u trains everything
else except the time embedding and the output layers (the paper's `noxattn`).

x_t, as in ESD's code: a DDIM trajectory of the model being trained, with classifier-free guidance on
c_f, stopped at a random step k; every noise prediction is taken at that step's timestep.
`xt="cache"` instead noises the original model's cached images of the spec's targets (cheaper; not
ESD). docs/baselines.md lists every remaining difference from the reference code.
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
    """ESD's options; the reference run is 1000 iterations at lr 1e-5, batch 1 (`--steps --lr --batch`)."""

    erase_concept: str | None = None  # c_e, the phrase to erase (ESD: --prompt); default: the spec's concept name
    erase_from: str | None = None  # c_f, the prompt whose prediction is trained (ESD: --erase_from); default: c_e
    negative_guidance: float = 1.0  # eta (ESD's paper code: 1.0)
    xt: str = "sample"  # sample: partial DDIM of the trained model (ESD); cache: noised original images
    ddim_steps: int | None = None  # DDIM steps of that trajectory (ESD: 50; default: the model's sampling steps)
    start_guidance: float = 3.0  # CFG of that trajectory (ESD: 3.0)

    def validate(self) -> "EsdConfig":
        if self.xt not in XT_SOURCES:
            raise UserError(f"unknown xt source {self.xt!r}; choose one of {', '.join(XT_SOURCES)}")
        if self.ddim_steps is not None and self.ddim_steps < 1:
            raise UserError("ddim_steps must be at least 1")
        for key in ("erase_concept", "erase_from"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                raise UserError(f"{key} is empty: give the concept phrase, e.g. {key}=circle (or leave it unset)")
        return self


def esd_x_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """Every parameter of the text cross-attention blocks (ESD's `xattn`)."""
    return {n: p for n, p in unet.named_parameters() if ".attn2." in n}


def esd_u_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """Everything but cross-attention, time embedding and output layers (ESD's `noxattn`)."""
    return {n: p for n, p in unet.named_parameters() if ".attn2." not in n and not n.startswith(_ESD_U_EXCLUDE)}


def esd_target(e_null: torch.Tensor, e_erase: torch.Tensor, e_from: torch.Tensor, eta: float) -> torch.Tensor:
    """What eps_theta(x_t, c_f) is trained towards: c_f's original prediction without the concept's
    guidance direction, then eta times further away from it."""
    return e_from - (1 + eta) * (e_erase - e_null)


class _Esd:
    config_cls = EsdConfig
    select = staticmethod(esd_x_parameters)

    def __init__(self, ctx: RunContext, cfg: EsdConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.erase = (cfg.erase_concept or ctx.spec.name).strip()
        self.erase_from = (cfg.erase_from or self.erase).strip()
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
    def sample_xt(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t from a DDIM trajectory of the current model (CFG on c_f) stopped at a random step k, and
        that step's timestep (ESD: `run_till_timestep`); this rank's shard of the batch."""
        ctx, cfg = self.ctx, self.cfg
        steps = cfg.ddim_steps or ctx.model.num_inference_steps
        sched = ctx.ddim(steps)
        size = ctx.model.resolution // ctx.pipe.vae_scale_factor
        noise = torch.randn((batch, ctx.unet.config.in_channels, size, size), generator=ctx.rng)
        latents = ctx.shard(noise).to(ctx.device) * sched.init_noise_sigma
        stop = int(torch.randint(0, steps, (1,), generator=ctx.rng))
        n = len(latents)
        cond = torch.cat([ctx.uncond.expand(n, -1, -1), ctx.text([self.erase_from] * n)])
        for t in sched.timesteps[:stop]:
            inp = sched.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = ctx.eps(inp, t, cond).chunk(2)
            latents = sched.step(eps_u + cfg.start_guidance * (eps_c - eps_u), t, latents).prev_sample
        return latents, sched.timesteps[stop].expand(n).to(ctx.device)

    def xt(self, batch: int | None = None, source: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of x_t (default: the run's batch, from the method's `xt` source)."""
        ctx = self.ctx
        batch = batch or ctx.common.batch
        if (source or self.cfg.xt) == "sample":
            return self.sample_xt(batch)
        _, z_t, t = ctx.noised(ctx.target_latents, batch)
        return z_t, t

    def loss(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """||eps_theta(x_t, c_f) - target||^2, every term of the target from the frozen original."""
        ctx, n = self.ctx, len(z_t)
        c_erase, c_from = ctx.text([self.erase] * n), ctx.text([self.erase_from] * n)
        e_null = ctx.eps(z_t, t, ctx.uncond.expand(n, -1, -1), original=True)
        e_erase = ctx.eps(z_t, t, c_erase, original=True)
        e_from = e_erase if self.erase_from == self.erase else ctx.eps(z_t, t, c_from, original=True)
        return F.mse_loss(ctx.eps(z_t, t, c_from), esd_target(e_null, e_erase, e_from, self.cfg.negative_guidance))

    def step(self, k: int) -> dict:
        loss = self.loss(*self.xt())
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
