"""TRUST, robust mode (`trust-robust`, `trust unlearn --robust`): unlearn what adversarial prompts still reach.

Plain TRUST locates and trains the concept neurons on the target prompts only, so a prompt an attacker
optimised can route around them. Every `attack_every` steps a cheap inner attack on the *current* model
(UnlearnDiffAtk's objective, continuous, AdvUnlearn-style) finds `adv_tokens` free token embeddings,
appended to a target prompt, that make the model reconstruct the original model's concept images again:

    min_delta ||eps_theta(z_t, t, c(p + delta)) - eps||^2,   delta <- delta - lr * std(E) * sign(grad)

The text states of the last `bank_size` attacks then join (a) the saliency (`in_saliency`: the mask also
covers the neurons the attacks reach) and (b) the forget term (`in_loss`). Only masked rows still move.
See docs/method.md, "Robust mode".
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trust_unlearn.attacks.base import TextOps
from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext, gradients
from trust_unlearn.methods.trust import Trust, TrustConfig


@dataclass
class RobustConfig(TrustConfig):
    attack_every: int = 10  # run the inner attack every k steps (and at step 0)
    attack_steps: int = 5  # signed-gradient steps per inner attack
    attack_lr: float = 0.25  # step size, in units of the token-embedding table's std (scale-free across models)
    adv_tokens: int = 3  # free token embeddings appended to the target prompt
    attack_batch: int = 2  # (concept image, target prompt) pairs attacked each time, one delta each
    bank_size: int = 4  # attacks whose adversarial states are kept (the last ones)
    in_saliency: bool = True  # adversarial states join the saliency estimate (the mask)
    in_loss: bool = True  # the forget term is also applied on adversarial states
    adv_weight: float = 1.0  # weight of that adversarial forget term

    def validate(self) -> "RobustConfig":
        super().validate()
        bad = [f"{name} must be >= 1, not {getattr(self, name)}"
               for name in ("attack_every", "attack_steps", "adv_tokens", "attack_batch", "bank_size")
               if getattr(self, name) < 1]
        if not self.attack_lr > 0:
            bad.append(f"attack_lr must be positive, not {self.attack_lr}")
        if self.adv_weight < 0:
            bad.append(f"adv_weight must be >= 0, not {self.adv_weight}")
        if not (self.in_saliency or self.in_loss):
            bad.append("in_saliency and in_loss are both off, so the attacks would change nothing (use --method trust)")
        if bad:
            raise UserError("trust-robust: " + "; ".join(bad))
        return self


@register_method("trust-robust")
class TrustRobust(Trust):
    config_cls = RobustConfig

    def __init__(self, ctx: RunContext, cfg: RobustConfig):
        super().__init__(ctx, cfg)
        if ctx.is_sdxl:
            raise UserError("trust-robust needs one text encoder (SD 1.x/2.x shape); SDXL is not supported yet")
        if cfg.attack_batch % ctx.world:
            raise UserError(f"with {ctx.world} processes attack_batch ({cfg.attack_batch}) must divide evenly")
        self.text = TextOps(ctx.pipe)
        room = self.text.max_length - len(self.text.prefix_ids) - len(self.text.suffix_ids) - cfg.adv_tokens
        if room < 1:
            raise UserError(f"trust-robust: adv_tokens={cfg.adv_tokens} leaves no room for the prompt in the "
                            f"tokenizer's {self.text.max_length} tokens; lower adv_tokens")
        self.vocab = self.text.allowed()  # whole-word tokens: where each delta starts
        self.slots = [self._slots(p, room) for p in ctx.spec.targets]  # (ids, mask, positions) per target prompt
        self.bank: list[tuple[torch.Tensor, torch.Tensor]] = []  # (adversarial text states, target_latents rows)
        self.adv_forget: torch.Tensor | None = None

    def _slots(self, prompt: str, room: int):
        body = self.text.tokenizer(prompt, add_special_tokens=False).input_ids[:room]
        ids, mask = self.text.ids_from_tokens([body + [int(self.vocab[0])] * self.cfg.adv_tokens])
        start = len(self.text.prefix_ids) + len(body)
        return ids, mask, list(range(start, start + self.cfg.adv_tokens))

    def adversarial_states(self, target_ids: list[int], delta: torch.Tensor) -> torch.Tensor:
        """Text states of "target prompt + delta" (delta: (B, adv_tokens, d) token embeddings), differentiable."""
        rows = []
        for b, i in enumerate(target_ids):
            ids, mask, positions = self.slots[i]
            rows.append(self.text.encode(ids, mask, positions, delta[b : b + 1]))
        return torch.cat(rows).to(self.ctx.device)

    # ------------------------------------------------------------------ inner attack
    def inner_attack(self) -> dict:
        """Signed-gradient descent on appended token embeddings against the current weights; the best delta
        per sample (lowest diffusion loss on its fixed (z_t, t, eps)) is banked as text states."""
        ctx, cfg = self.ctx, self.cfg
        rows, z_t, t, noise = ctx._draw(ctx.target_latents, cfg.attack_batch)
        target_ids = ctx.target_idx[rows].tolist()
        starts = ctx.shard(self.vocab[torch.randint(0, len(self.vocab), (cfg.attack_batch, cfg.adv_tokens),
                                                    generator=ctx.rng)])
        table = self.text.embedding.weight.detach()
        step = cfg.attack_lr * float(table.std())

        def losses(states):  # per-sample diffusion loss: each delta is judged on its own image
            return (ctx.eps(z_t, t, states) - noise).pow(2).flatten(1).mean(1)

        delta = table[starts.to(table.device)].clone()
        best, best_loss = delta.clone(), torch.full((len(delta),), float("inf"), device=delta.device)

        def keep_better(candidate, loss):
            nonlocal best_loss
            better = loss < best_loss
            best[better] = candidate[better]
            best_loss = torch.minimum(best_loss, loss)

        first_loss = None
        for _ in range(cfg.attack_steps):
            delta.requires_grad_(True)
            loss = losses(self.adversarial_states(target_ids, delta))
            (grad,) = torch.autograd.grad(loss.sum(), delta)  # a plain backward (no double backward): any kernel
            if first_loss is None:
                first_loss = loss.detach()
            keep_better(delta.detach(), loss.detach())
            delta = delta.detach() - step * grad.sign()
        with torch.no_grad():
            keep_better(delta, losses(self.adversarial_states(target_ids, delta)))
            plain = losses(ctx.text([ctx.spec.targets[i] for i in target_ids]))
            self.bank = [*self.bank, (self.adversarial_states(target_ids, best), rows)][-cfg.bank_size:]
        return {"attack_loss_plain": plain.mean().item(), "attack_loss_init": first_loss.mean().item(),
                "attack_loss": best_loss.mean().item()}

    def banked(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([s for s, _ in self.bank]), torch.cat([r for _, r in self.bank])

    # ------------------------------------------------------------------ saliency with adversarial states
    def saliency_gradients(self) -> dict[str, torch.Tensor]:
        """g = dA/d theta on the target prompts (as TRUST) + the same on banked adversarial states."""
        grads = super().saliency_gradients()
        if self.cfg.in_saliency and self.bank:
            adv = self.adversarial_saliency_gradients()
            grads = {n: g + adv[n] for n, g in grads.items()}
        return grads

    def adversarial_saliency_gradients(self) -> dict[str, torch.Tensor]:
        """TRUST's trajectory-alignment gradient, conditioned on adversarial states and scored against the plain
        target prompt: the neurons that carry the concept when an attack evokes it."""
        ctx, cfg = self.ctx, self.cfg
        states, rows = self.banked()
        picks = torch.randint(0, len(rows), (cfg.saliency_batch,), generator=ctx.rng)
        noise = self.saliency_noise(len(picks))
        picks = ctx.shard(picks)
        prompts = [ctx.spec.targets[i] for i in ctx.target_idx[rows[picks]].tolist()]
        cond = torch.cat([ctx.uncond.expand(len(picks), -1, -1), states[picks]])
        with ctx.timer("saliency_adversarial"):
            latents = self.saliency_trajectory(cond, noise)
            grads = gradients(self._score(ctx.decode(latents), prompts), self.params)
            ctx.average(list(grads.values()))
        return grads

    # ------------------------------------------------------------------ forget term on adversarial states
    def adversarial_forget_loss(self) -> torch.Tensor:
        """TRUST's forget term L(c_adv, c_anchor) on the concept images the banked attacks were fit to."""
        ctx = self.ctx
        states, rows = self.banked()
        n = ctx.common.batch
        picks = torch.randint(0, len(rows), (n,), generator=ctx.rng)
        t = torch.randint(0, ctx.noise_scheduler.config.num_train_timesteps, (n,), generator=ctx.rng)
        noise = torch.randn((n, *ctx.target_latents.shape[1:]), generator=ctx.rng)
        picks, t, noise = ctx.shard(picks), ctx.shard(t), ctx.shard(noise)
        z0 = ctx.target_latents[rows[picks]]
        z_t = ctx.noise_scheduler.add_noise(z0, noise.to(z0), t)
        anchors = ctx.text([ctx.spec.anchors[i] for i in ctx.target_idx[rows[picks]].tolist()])
        return ctx._moved(z_t, t.to(ctx.device), states[picks], anchors, self.cfg.objective)

    def apply_gradients(self, base: torch.Tensor, reg: torch.Tensor) -> float:
        """Trust.step builds base = L_forget + alpha L_retain; the adversarial forget term joins it here, before its
        gradient, so the regulariser's scale (beta's share) is taken of the whole preservation gradient."""
        self.adv_forget = None
        if self.cfg.in_loss and self.bank:
            with self.ctx.timer("adversarial_loss"):
                self.adv_forget = self.adversarial_forget_loss()
            if not torch.isfinite(self.adv_forget):
                raise UserError(f"the adversarial forget loss became {self.adv_forget.item()}; lower --lr")
            base = base + self.cfg.adv_weight * self.adv_forget
        return super().apply_gradients(base, reg)

    # ------------------------------------------------------------------ one step
    def step(self, k: int) -> dict:
        attack, start = {}, time.perf_counter()
        if k % self.cfg.attack_every == 0 or not self.bank:
            with self.ctx.timer("inner_attack"):
                attack = self.inner_attack()
        attack["attack_seconds"] = time.perf_counter() - start
        log = super().step(k)
        if self.adv_forget is not None:
            log["adv_forget_loss"] = self.adv_forget.item()
            log["loss"] += self.cfg.adv_weight * log["adv_forget_loss"]
        log.update(attack)
        return log

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {**super().state_dict(), "adv_bank": [{"states": s, "rows": r} for s, r in self.bank]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.bank = [(e["states"].to(self.ctx.device), e["rows"]) for e in state["adv_bank"]]
