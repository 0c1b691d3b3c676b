"""MMA-Diffusion-style text-embedding attack (Yang et al., 2024): greedy coordinate gradient (GCG)
token search for a prompt whose text embedding matches the target prompt's, without the concept's words.

Objective: 1 - cos(pool(E_attacked(adv)), pool(E_original(p))), pool = mean of the text states over
the positions the UNet attends to. The target embedding comes from the *original* text encoder (what
the concept prompt means); the adversarial prompt goes through the *attacked* model's text encoder
(an unlearned text encoder must be beaten, not bypassed). Each step: the gradient w.r.t. the one-hot
token choice ranks the top-k replacements per position; a batch of single-token swaps is evaluated
exactly and the best kept. Tokens are whole words of the vocabulary minus the concept's words.
It returns its `keep` best distinct prompts (by objective), so near-ties that the text objective cannot
separate are all replayed; like the paraphrase candidates, the target is broken if any of them works.
The search starts from the target prompt's own (allowed) words with random tokens in place of the
concept's words, plus one random token. The objective compares, position by position, the text states
as the *original* UNet's cross-attention reads them: projected by every attn2 block's key and value
weights (`objective = "attention"`, the default; public weights, like MMA's public CLIP encoder).
Raw text states (`"sequence"`) or MMA's pooled embedding (`"pooled"`) rank other colour words above
the concept's synonyms on the testbed ("a red cross" -> "a yellow cross"): the text encoder's geometry
is not the geometry the image model uses; through the key/value projections "crimson" is nearest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trust_unlearn.attacks.base import Attack, TextOps, register_attack


@register_attack("mma")
class MMA(Attack):
    kind = "white-box on the text encoder only"
    budget_unit = "GCG steps"
    default_budget = 30
    quick_budget = 2
    top_k = 64
    n_candidates = 48
    objective = "attention"  # or "sequence", "pooled"
    extra_tokens = 1
    keep = 3  # the best distinct prompts returned; the target counts as broken if any of them works

    def candidates(self, target_prompt: str, index: int) -> list[str]:
        gen = self.generator(index)
        text = self.text
        n = max(1, min(10, text.max_length - 2))
        n = max(1, min(n, len(text.tokenizer(target_prompt, add_special_tokens=False).input_ids) + self.extra_tokens))
        read = self._reader()
        with torch.no_grad():
            target = read(TextOps(self.original.pipe).states([target_prompt]))  # (1, L, d)

        def objective(states):  # per row: 1 - similarity to the target
            states = read(states)
            if self.objective == "pooled":
                return 1 - F.cosine_similarity(states.mean(1), target.mean(1))
            return 1 - F.cosine_similarity(states, target, dim=-1).mean(1)

        allowed = self.text.allowed(self.banned)
        table = text.embedding.weight.detach()

        def losses(rows: torch.Tensor) -> torch.Tensor:
            ids, mask = text.ids_from_tokens(rows.tolist())
            with torch.no_grad():
                return objective(text.encode(ids, mask))

        positions = list(range(1, n + 1))
        # warm start: the target prompt's own words, its concept words (and any non-word token) drawn at random
        allowed_set = set(allowed.tolist())
        cur = allowed[torch.randint(0, len(allowed), (n,), generator=gen)]
        own = text.tokenizer(target_prompt, add_special_tokens=False).input_ids[:n]
        for k, tok in enumerate(own):
            if tok in allowed_set:
                cur[k] = tok
        cur_loss = float(losses(cur[None])[0])
        seen = {tuple(cur.tolist()): cur_loss}  # every exactly evaluated row -> its loss
        ids, mask = text.ids_from_tokens([cur.tolist()])
        bar = getattr(self, "bar", None)
        for _ in range(self.budget):
            emb = table[cur].clone().requires_grad_(True)
            loss = objective(text.encode(ids, mask, positions, emb)).sum()
            (grad,) = torch.autograd.grad(loss, emb)
            scores = -grad @ table[allowed].T  # first-order decrease of the loss per (position, token)
            top = allowed[scores.topk(min(self.top_k, len(allowed)), dim=-1).indices]  # (n, k)
            pos = torch.randint(0, n, (self.n_candidates,), generator=gen)
            pick = torch.randint(0, top.shape[1], (self.n_candidates,), generator=gen)
            rows = cur.repeat(self.n_candidates, 1)
            rows[torch.arange(self.n_candidates), pos] = top[pos, pick]
            cand = losses(rows)
            seen.update(zip(map(tuple, rows.tolist()), cand.tolist()))
            best = int(cand.argmin())
            if float(cand[best]) < cur_loss:
                cur, cur_loss = rows[best], float(cand[best])
                ids, mask = text.ids_from_tokens([cur.tolist()])
            if bar is not None:
                bar.update(1)
        prompts = [text.prompt(cur.tolist())]
        for row, _ in sorted(seen.items(), key=lambda item: item[1]):
            if len(prompts) >= self.keep:
                break
            prompt = text.prompt(list(row))
            if prompt not in prompts:
                prompts.append(prompt)
        return prompts

    def _reader(self):
        """Text states -> what the objective compares: the original UNet's attn2 keys and values, or the states."""
        if self.objective != "attention":
            return lambda states: states
        blocks = [m for name, m in self.original.pipe.unet.named_modules() if name.endswith("attn2")]
        return lambda states: torch.cat([torch.cat([b.to_k(states), b.to_v(states)], -1) for b in blocks], -1)
