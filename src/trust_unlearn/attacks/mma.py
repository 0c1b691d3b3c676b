"""MMA-Diffusion-style text-embedding attack (Yang et al., 2024): greedy coordinate gradient (GCG)
token search for a prompt whose text embedding matches the target prompt's, without the concept's words.

Objective: 1 - cos(pool(E_attacked(adv)), pool(E_original(p))), pool = mean of the text states over
the positions the UNet attends to. The target embedding comes from the *original* text encoder (what
the concept prompt means); the adversarial prompt goes through the *attacked* model's text encoder
(an unlearned text encoder must be beaten, not bypassed). Each step: the gradient w.r.t. the one-hot
token choice ranks the top-k replacements per position; a batch of single-token swaps is evaluated
exactly and the best kept. Tokens are whole words of the vocabulary minus the concept's words.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trust_unlearn.attacks.base import Attack, TextOps, register_attack


@register_attack("mma")
class MMA(Attack):
    kind = "white-box on the text encoder only"
    budget_unit = "GCG steps"
    default_budget = 60
    quick_budget = 2
    top_k = 64
    n_candidates = 64

    def candidates(self, target_prompt: str, index: int) -> list[str]:
        gen = self.generator(index)
        text = self.text
        n = max(1, min(10, text.max_length - 2))
        target = TextOps(self.original.pipe).states([target_prompt]).mean(1)  # (1, d)
        allowed = self.text.allowed(self.banned)
        table = text.embedding.weight.detach()
        positions = list(range(1, n + 1))

        def losses(rows: torch.Tensor) -> torch.Tensor:
            ids, mask = text.ids_from_tokens(rows.tolist())
            with torch.no_grad():
                return 1 - F.cosine_similarity(text.encode(ids, mask).mean(1), target)

        cur = allowed[torch.randint(0, len(allowed), (n,), generator=gen)]
        cur_loss = float(losses(cur[None])[0])
        ids, mask = text.ids_from_tokens([cur.tolist()])
        bar = getattr(self, "bar", None)
        for _ in range(self.budget):
            emb = table[cur].clone().requires_grad_(True)
            loss = 1 - F.cosine_similarity(text.encode(ids, mask, positions, emb).mean(1), target).sum()
            (grad,) = torch.autograd.grad(loss, emb)
            scores = -grad @ table[allowed].T  # first-order decrease of the loss per (position, token)
            top = allowed[scores.topk(min(self.top_k, len(allowed)), dim=-1).indices]  # (n, k)
            pos = torch.randint(0, n, (self.n_candidates,), generator=gen)
            pick = torch.randint(0, top.shape[1], (self.n_candidates,), generator=gen)
            rows = cur.repeat(self.n_candidates, 1)
            rows[torch.arange(self.n_candidates), pos] = top[pos, pick]
            cand = losses(rows)
            best = int(cand.argmin())
            if float(cand[best]) < cur_loss:
                cur, cur_loss = rows[best], float(cand[best])
                ids, mask = text.ids_from_tokens([cur.tolist()])
            if bar is not None:
                bar.update(1)
        return [text.prompt(cur.tolist())]
