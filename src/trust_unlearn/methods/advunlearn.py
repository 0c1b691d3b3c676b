"""AdvUnlearn (Zhang et al., NeurIPS 2024): ESD erasure made robust by adversarial training.

Every `attack_every` steps (from `warmup_steps` on, by default the first fifth of the run as the reference's 200 of
its 1000 iterations) an inner attack finds `adv_tokens` continuous token
embeddings delta, placed before (or after) the erase phrase c_e, with which the model being trained
predicts the original model's concept noise again (signed-gradient steps on delta):
    min_delta ||eps_theta(x_t, c_theta(delta + c_e)) - eps_theta0(x_t, c_e)||^2
The outer step is ESD's loss on that adversarial prompt plus the utility term on the retain prompts:
    ||eps_theta(x_t, c_theta(delta + c_e)) - [eps_theta0(x_t) - eta (eps_theta0(x_t, c_e) - eps_theta0(x_t))]||^2
  + retain_loss_w ||eps_theta(z_r, c_theta(r)) - eps_theta0(z_r, c_0(r))||^2
theta is the text encoder (the paper's main variant, `text_encoder_full`: everything but its embeddings)
or, `component=unet_xattn`, the UNet's cross-attention. Original text states c_0 come from `ctx.text`,
whose cache was filled before the first update. docs/baselines.md lists the differences from the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trust_unlearn.attacks.base import TextOps
from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext
from trust_unlearn.methods.esd import XT_SOURCES, _Esd, esd_target, esd_x_parameters

COMPONENTS = ("text_encoder", "unet_xattn")
POSITIONS = ("prefix", "suffix")
INITS = ("latest", "random")
UPDATES = ("sign", "adam")
TEXT_ENCODER_PREFIX = "text_encoder."  # trainable names: never mistaken for UNet tensors by the engine


@dataclass
class AdvUnlearnConfig:
    """AdvUnlearn's options (reference: AdvUnlearn.py's defaults; its run is 1000 iterations at lr 1e-5)."""

    component: str = "text_encoder"  # text_encoder (reference text_encoder_full) | unet_xattn (reference xattn)
    erase_concept: str | None = None  # c_e (reference --prompt); default: the spec's concept name
    negative_guidance: float = 1.0  # eta (reference --negative_guidance)
    xt: str = "sample"  # sample: partial DDIM of the trained model, as ESD and the reference; cache: noised original images
    ddim_steps: int | None = None  # steps of that trajectory (reference 50; default: the model's sampling steps)
    start_guidance: float = 3.0  # its CFG (reference 3)
    adv_tokens: int = 1  # adversarial token embeddings (reference --adv_prompt_num)
    adv_position: str = "prefix"  # prefix | suffix of c_e (reference --attack_type prefix_k | suffix_k)
    attack_init: str = "latest"  # latest: start from the previous attack's tokens; random: from random words
    attack_steps: int = 30  # inner steps per attack (reference --attack_step)
    attack_batch: int = 1  # x_t samples per inner step (reference: one fresh x_t per step)
    attack_xt: str = "sample"  # the inner steps' x_t: sample (fresh partial DDIM, as the reference) | cache (noised
    # original concept images: ~10x cheaper; the testbed's tuned setting, see docs/baselines.md)
    attack_lr: float = 1e-3  # step size on the token embeddings (reference --attack_lr)
    attack_update: str = "sign"  # sign: delta -= lr * sign(grad) (PGD); adam: Adam on the raw gradient (reference `pgd`)
    attack_every: int = 1  # steps between attacks (reference --adv_prompt_update_step)
    warmup_steps: int | None = None  # plain ESD steps before the first attack (reference --warmup_iter 200 of 1000
    # iterations); default: a fifth of --steps, so a run of any length attacks for its last four fifths
    retain_loss_w: float = 1.0  # weight of the retain term (reference --retain_loss_w, --retain_train reg)

    def validate(self) -> "AdvUnlearnConfig":
        choices = {"component": COMPONENTS, "adv_position": POSITIONS, "attack_init": INITS,
                   "attack_update": UPDATES, "xt": XT_SOURCES, "attack_xt": XT_SOURCES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"unknown {key} {getattr(self, key)!r}; choose one of {', '.join(allowed)}")
        for key in ("adv_tokens", "attack_steps", "attack_every", "attack_batch"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, not {getattr(self, key)}")
        if (self.warmup_steps is not None and self.warmup_steps < 0) or (self.ddim_steps is not None and self.ddim_steps < 1):
            raise UserError("warmup_steps must be >= 0 and ddim_steps >= 1")
        if not self.attack_lr > 0 or self.retain_loss_w < 0:
            raise UserError(f"attack_lr must be positive and retain_loss_w >= 0 (got {self.attack_lr}, {self.retain_loss_w})")
        if self.erase_concept is not None and not self.erase_concept.strip():
            raise UserError("erase_concept is empty: give the concept phrase, e.g. erase_concept=circle (or leave it unset)")
        return self


def text_encoder_parameters(encoder) -> dict[str, torch.nn.Parameter]:
    """The reference's `text_encoder_full`: every transformer layer and the final norm, not the
    token/position embeddings (nor BERT's unused pooler)."""
    return {TEXT_ENCODER_PREFIX + n: p for n, p in encoder.named_parameters()
            if "embeddings." not in n and not n.startswith("pooler.")}


@register_method("advunlearn")
class AdvUnlearn(_Esd):
    config_cls = AdvUnlearnConfig

    def __init__(self, ctx: RunContext, cfg: AdvUnlearnConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        if ctx.is_sdxl:
            raise UserError("advunlearn needs a pipeline with one text encoder (SD 1.x/2.x, the testbed), not SDXL")
        self.warmup = ctx.common.steps // 5 if cfg.warmup_steps is None else cfg.warmup_steps
        if self.warmup >= ctx.common.steps:
            raise UserError(f"advunlearn: warmup_steps={self.warmup} leaves none of the {ctx.common.steps} steps to the "
                            "inner attack, so the run would be plain ESD on the text encoder; lower warmup_steps or "
                            "leave it unset (a fifth of --steps, as the reference's 200 of 1000)")
        self.erase = self.erase_from = (cfg.erase_concept or ctx.spec.name).strip()
        ctx.text([self.erase])  # cache c_0(c_e) now, while the text encoder is the original
        self.text = TextOps(ctx.pipe)
        self.adv_ids, self.adv_mask, self.adv_positions = self._adversarial_layout()
        self.trains_text = cfg.component == "text_encoder"
        ctx.unet.requires_grad_(False)
        ctx.pipe.text_encoder.requires_grad_(False)
        self.params = text_encoder_parameters(ctx.pipe.text_encoder) if self.trains_text else esd_x_parameters(ctx.unet)
        if not self.params:
            raise UserError(f"advunlearn: this pipeline has no {cfg.component} parameters to train")
        for p in self.params.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params.values(), lr=ctx.common.lr)
        self.adv: torch.Tensor | None = None  # the latest adversarial token embeddings (k, d)

    # ------------------------------------------------------------------ text states
    def _adversarial_layout(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Input ids of "delta + c_e" (placeholder tokens where delta goes) and delta's positions."""
        k, text = self.cfg.adv_tokens, self.text
        body = text.tokenizer(self.erase, add_special_tokens=False).input_ids
        room = text.max_length - len(text.prefix_ids) - len(text.suffix_ids)
        if len(body) + k > room:
            raise UserError(f"adv_tokens={k} and {self.erase!r} ({len(body)} tokens) exceed the text encoder's "
                            f"{room} tokens; use fewer adv_tokens or a shorter erase_concept")
        placeholder = [int(text.vocab_ids[0])] * k
        prefix = self.cfg.adv_position == "prefix"
        ids, mask = text.ids_from_tokens([placeholder + body if prefix else body + placeholder])
        start = len(text.prefix_ids) + (0 if prefix else len(body))
        return ids, mask, list(range(start, start + k))

    def adversarial_states(self, adv: torch.Tensor, n: int) -> torch.Tensor:
        """c_theta(delta + c_e) through the current text encoder, differentiable in delta (and theta)."""
        states = self.text.encode(self.adv_ids, self.adv_mask, self.adv_positions, adv)
        return states.to(self.ctx.uncond.dtype).expand(n, -1, -1)

    def current_states(self, prompts: list[str]) -> torch.Tensor:
        """c_theta(prompts): through the trained text encoder, or the cached original states if it is frozen."""
        if not self.trains_text:
            return self.ctx.text(prompts)
        return self.text.encode(*self.text.tokenize(prompts)).to(self.ctx.uncond.dtype)

    def eps_original(self, z_t, t, cond) -> torch.Tensor:
        """eps_theta0: the frozen original UNet (when the text encoder trains, the UNet *is* the original)."""
        if not self.trains_text:
            return self.ctx.eps(z_t, t, cond, original=True)
        with torch.no_grad():
            return self.ctx.eps(z_t, t, cond)

    # ------------------------------------------------------------------ inner attack
    def initial_adv(self) -> torch.Tensor:
        """The previous attack's tokens (`latest`), else the embeddings of random vocabulary words."""
        if self.cfg.attack_init == "latest" and self.adv is not None:
            return self.adv
        words = self.text.vocab_ids[torch.randint(0, len(self.text.vocab_ids), (self.cfg.adv_tokens,), generator=self.ctx.rng)]
        return self.text.embedding.weight.detach()[words.to(self.ctx.device)].clone()

    def attack_loss(self, adv: torch.Tensor, z_t, t) -> torch.Tensor:
        """How far the trained model with "delta + c_e" is from the original's prediction for c_e."""
        n = len(z_t)
        target = self.eps_original(z_t, t, self.ctx.text([self.erase] * n))
        return F.mse_loss(self.ctx.eps(z_t, t, self.adversarial_states(adv, n)), target)

    def attack(self, adv: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """`attack_steps` descent steps on delta, each on a fresh x_t batch; returns delta and its losses."""
        cfg, losses = self.cfg, []
        adv = adv.detach().clone().requires_grad_(True)
        adam = torch.optim.Adam([adv], lr=cfg.attack_lr) if cfg.attack_update == "adam" else None
        for _ in range(cfg.attack_steps):
            loss = self.attack_loss(adv, *self.xt(cfg.attack_batch, cfg.attack_xt))
            (grad,) = torch.autograd.grad(loss, adv)  # delta only: no gradient reaches theta
            self.ctx.average([grad])  # data parallel: every rank takes the same step
            if adam is None:
                with torch.no_grad():
                    adv -= cfg.attack_lr * grad.sign()
            else:
                adv.grad = grad
                adam.step()
            losses.append(loss.item())
        return adv.detach(), losses

    # ------------------------------------------------------------------ outer step
    def erase_loss(self, z_t, t) -> torch.Tensor:
        """ESD's loss with c_theta(delta + c_e) (plain c_e before the first attack) as the trained prompt."""
        ctx, n = self.ctx, len(z_t)
        e_null = self.eps_original(z_t, t, ctx.uncond.expand(n, -1, -1))
        e_erase = self.eps_original(z_t, t, ctx.text([self.erase] * n))
        states = self.current_states([self.erase] * n) if self.adv is None else self.adversarial_states(self.adv, n)
        return F.mse_loss(ctx.eps(z_t, t, states), esd_target(e_null, e_erase, e_erase, self.cfg.negative_guidance))

    def retain_loss(self) -> torch.Tensor:
        """The utility term: the trained model's prediction for retain prompts on the original's retain
        images stays the original's (the reference's COCO `reg` term, on the spec's retain prompts)."""
        ctx = self.ctx
        if ctx.retain_latents is None:
            return torch.zeros((), device=ctx.device)
        rows, z_t, t = ctx.noised(ctx.retain_latents, ctx.common.batch)
        prompts = [ctx.spec.retains[i] for i in ctx.retain_idx[rows].tolist()]
        return F.mse_loss(ctx.eps(z_t, t, self.current_states(prompts)), self.eps_original(z_t, t, ctx.text(prompts)))

    def step(self, k: int) -> dict:
        cfg, row = self.cfg, {}
        if k >= self.warmup and (k - self.warmup) % cfg.attack_every == 0:
            with self.ctx.timer("attack"):
                self.adv, losses = self.attack(self.initial_adv())
            row.update(attack_loss_first=losses[0], attack_loss_last=losses[-1])
        erase, retain = self.erase_loss(*self.xt()), self.retain_loss()
        loss = erase + cfg.retain_loss_w * retain
        if not torch.isfinite(loss):
            raise UserError(f"the loss became {loss.item()} at step {k}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "erase_loss": erase.item(), "retain_loss": retain.item(), **row}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "adv": self.adv}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.adv = state["adv"]
