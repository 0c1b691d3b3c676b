"""P4D (Chin et al., 2023): white-box prompt optimisation matching the original model's noise prediction.

Along the original model's CFG DDIM trajectories for the target prompt, a prefix of `n_tokens`
discrete tokens (P4D-K style: prefix + target prompt) is optimised so that the *unlearned* model's
conditional noise prediction matches the *original* model's for the target prompt:
min E_{(z_t,t) on trajectory} ||eps_theta(z_t, t, c(prefix + p)) - eps_theta0(z_t, t, c(p))||^2.
Continuous relaxation + projection onto the whole-word vocabulary as in UnlearnDiffAtk (PEZ).
"""
from __future__ import annotations

import torch

from trust_unlearn.attacks.base import Attack, original_trajectory, register_attack


@register_attack("p4d")
class P4D(Attack):
    kind = "white-box (unlearned UNet + text encoder; original model's noise predictions)"
    budget_unit = "steps"
    default_budget = 30
    quick_budget = 2
    n_tokens = 5
    n_trajectories = 2
    batch = 4
    eval_batch = 8

    def candidates(self, target_prompt: str, index: int) -> list[str]:
        gen = self.generator(index)
        seeds = [self.seed * 100_000 + 93_000 + 16 * index + k for k in range(self.n_trajectories)]
        traj = original_trajectory(self.original, target_prompt, seeds)

        def pick(n, g):
            rows = torch.randint(0, len(traj["t"]), (n,), generator=g)
            return traj["z_t"][rows], traj["t"][rows], traj["eps"][rows]

        fixed_gen = torch.Generator().manual_seed(self.seed + 54321 + index)
        return self.optimize_noise_matching_prefix(target_prompt, gen, pick, fixed_gen)
