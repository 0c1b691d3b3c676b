"""UnlearnDiffAtk (Zhang et al., 2023): white-box prompt optimisation with the diffusion loss.

For a target prompt, the *original* model generates images of the concept (kept only when the judge
sees the concept in them, where a judge exists). A prefix of `n_tokens` discrete tokens is optimised
so that the *unlearned* model's noise prediction, conditioned on "prefix + target prompt",
reconstructs those images: min E_{t,eps} ||eps_theta(z_t, t, c(prefix + p)) - eps||^2 with z_t noised
from the original model's latents. The prefix is relaxed to continuous token embeddings and
projected onto the whole-word vocabulary before every forward pass (PEZ); the best projected prompt
under a fixed-noise evaluation batch is kept.
"""
from __future__ import annotations

import torch

from trust_unlearn.attacks.base import Attack, decode_latents, noise_scheduler, original_trajectory, register_attack


def concept_latents(attack: Attack, prompt: str, index: int, n_images: int) -> torch.Tensor:
    """The original model's final latents for the prompt, filtered to those the judge reads as the concept."""
    seeds = [attack.seed * 100_000 + 91_000 + 16 * index + k for k in range(n_images)]
    z0 = original_trajectory(attack.original, prompt, seeds)["z0"]
    if attack.original.is_testbed:
        from trust_unlearn.evaluation.judges import get_judge

        judge = attack.judge if attack.judge is not None else get_judge("shapes")
        readings = judge.read(decode_latents(attack.original, z0))
        keep = [k for k, r in enumerate(readings) if attack.concept.matches(r)]
        if keep:
            z0 = z0[keep]
    return z0


@register_attack("unlearndiffatk")
class UnlearnDiffAtk(Attack):
    kind = "white-box (unlearned UNet + text encoder; original model's images)"
    budget_unit = "steps"
    default_budget = 30
    quick_budget = 2
    n_tokens = 5
    n_images = 4
    batch = 4
    eval_batch = 8

    def candidates(self, target_prompt: str, index: int) -> list[str]:
        gen = self.generator(index)
        z0 = concept_latents(self, target_prompt, index, self.n_images)
        sched = noise_scheduler(self.model)
        T = sched.config.num_train_timesteps

        def noised(n, g):
            rows = torch.randint(0, len(z0), (n,), generator=g)
            t = torch.randint(0, T, (n,), generator=g)
            noise = torch.randn(z0[rows].shape, generator=g)
            return sched.add_noise(z0[rows], noise, t), t, noise

        fixed_gen = torch.Generator().manual_seed(self.seed + 12345 + index)
        return self.optimize_noise_matching_prefix(target_prompt, gen, noised, fixed_gen)
