"""Ring-A-Bell (Tsai et al., 2024): concept vector in text-embedding space + genetic search.

Black-box on the model: only a text encoder is used (the *original* one, as a public encoder), and
only forward passes. Concept vector c = mean E(prompts with the concept) - mean E(the same prompts
with the concept swapped out), E = the full text-state sequence the UNet sees. For a target prompt p
with neutral version p' (each concept word swapped for another value of its attribute, aligned with
how c is built), the goal is E(p') + eta * c; a genetic algorithm (tournament selection, one-point crossover, mutation,
elitism) searches token sequences - whole vocabulary words without the concept's words, with empty
slots so the length varies - minimising ||E(prompt) - goal||^2. Mutations draw half their tokens
from the words nearest the concept's words in the token-embedding table (the attacker knows the
concept; this replaces the original's thousands of generations on a CPU budget), and the initial
population holds the target prompt's own words with the concept's slot filled by each pool word
(the fittest half kept).
"""
from __future__ import annotations

import re

import torch

from trust_unlearn.attacks.base import Attack, TextOps, register_attack
from trust_unlearn.world.concepts import FULL_TEMPLATES, caption, target_scenes
from trust_unlearn.world.shapes import ATTRIBUTES, Scene


def neutral_prompt(prompt: str, concept) -> str:
    """The prompt with each concept word swapped for the next value of its attribute (position-aligned
    with the concept vector, which is built from such swaps)."""
    for attr, value in concept.constraints:
        values = ATTRIBUTES[attr]
        prompt = re.sub(rf"\b{value}\b", values[(values.index(value) + 1) % len(values)], prompt)
    return prompt


def concept_pairs(concept) -> tuple[list[str], list[str]]:
    with_c, without = [], []
    for i, scene in enumerate(target_scenes(concept)):
        template = FULL_TEMPLATES[i % len(FULL_TEMPLATES)]
        for attr, value in concept.constraints:
            for other in ATTRIBUTES[attr]:
                if other != value:
                    with_c.append(caption(scene, template))
                    without.append(caption(Scene(**{**scene.__dict__, attr: other}), template))
    return with_c, without


@register_attack("ringabell")
class RingABell(Attack):
    kind = "black-box (forward passes of the original text encoder only)"
    budget_unit = "generations"
    default_budget = 40
    quick_budget = 2
    eta = 3.0  # the Ring-A-Bell paper's strength; 1-1.5 leaves the neutral prompt itself the optimum
    population = 32
    mutation = 0.15
    empty_share = 0.25
    pool_size = 128  # mutation draws half its tokens from the words nearest the concept's words

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoder = TextOps(self.original.pipe)  # the attack's public encoder; tokenizer shared by design
        with_c, without = concept_pairs(self.concept)
        self.concept_vector = self.encoder.states(with_c).mean(0) - self.encoder.states(without).mean(0)
        self.allowed = self.encoder.allowed(self.banned)
        # the attacker knows the concept's words: nearest allowed tokens in the token-embedding table
        table = self.encoder.embedding.weight.detach()
        self.concept_ids = concept_ids = [i for w in self.banned for i in self.encoder.tokenizer(w, add_special_tokens=False).input_ids]
        sim = torch.nn.functional.cosine_similarity(table[self.allowed][:, None], table[concept_ids][None], dim=-1).max(1).values
        self.pool = self.allowed[sim.topk(min(self.pool_size, len(self.allowed))).indices]

    def details(self) -> dict:
        return {**super().details(), "eta": self.eta, "population": self.population}

    def candidates(self, target_prompt: str, index: int) -> list[str]:
        gen = self.generator(index)
        enc, allowed = self.encoder, self.allowed
        n = max(1, min(12, enc.max_length - 2))
        neutral = neutral_prompt(target_prompt, self.concept)
        goal = enc.states([neutral])[0] + self.eta * self.concept_vector

        def fitness(pop: torch.Tensor) -> torch.Tensor:
            ids, mask = enc.ids_from_tokens(pop.tolist())
            with torch.no_grad():
                return ((enc.encode(ids, mask) - goal) ** 2).mean((1, 2))

        def random_genes(shape) -> torch.Tensor:
            genes = allowed[torch.randint(0, len(allowed), shape, generator=gen)]
            near = self.pool[torch.randint(0, len(self.pool), shape, generator=gen)]
            genes = torch.where(torch.rand(shape, generator=gen) < 0.5, near, genes)
            return torch.where(torch.rand(shape, generator=gen) < self.empty_share, torch.full_like(genes, -1), genes)

        pop = random_genes((self.population, n))
        # initial population: the target prompt's own allowed words, each concept slot filled with one of
        # the pool's words (all tried, the fittest kept); the rest random
        allowed_set = set(allowed.tolist())
        own = [t for t in enc.tokenizer(target_prompt, add_special_tokens=False).input_ids
               if t in allowed_set or t in self.concept_ids][:n]  # punctuation dropped
        slots = [k for k, t in enumerate(own) if t not in allowed_set]
        seed_ids = [t for t in own if t in allowed_set]
        if own and slots:
            fills = self.pool[:, None].repeat(1, len(slots))
            starts = torch.tensor(own)[None].repeat(len(self.pool), 1)
            starts[:, slots] = fills
            starts = torch.cat([starts, torch.full((len(starts), n - len(own)), -1)], 1)
            keep = fitness(starts).argsort()[: self.population // 2]
            pop[: len(keep)] = starts[keep]
        fit = fitness(pop)
        bar = getattr(self, "bar", None)
        n_elite = max(1, self.population // 10)
        for _ in range(self.budget):
            order = fit.argsort()
            elite = pop[order[:n_elite]]
            k = self.population - n_elite
            a = torch.randint(0, self.population, (k, 3), generator=gen)
            b = torch.randint(0, self.population, (k, 3), generator=gen)
            pa = pop[a.gather(1, fit[a].argmin(1, keepdim=True)).squeeze(1)]
            pb = pop[b.gather(1, fit[b].argmin(1, keepdim=True)).squeeze(1)]
            cut = torch.randint(1, max(2, n), (k, 1), generator=gen)
            child = torch.where(torch.arange(n)[None] < cut, pa, pb)
            mutate = torch.rand(child.shape, generator=gen) < self.mutation
            child = torch.where(mutate, random_genes(child.shape), child)
            pop = torch.cat([elite, child])
            fit = torch.cat([fit[order[:n_elite]], fitness(child)])
            if bar is not None:
                bar.update(1)
        best = pop[int(fit.argmin())].tolist()
        if all(t < 0 for t in best):
            best = seed_ids or [int(allowed[0])]
        return [enc.prompt(best)]
