"""The evaluation protocol: what a run may see, what only the evaluation sees, and which tasks report.

- Templates: the full-caption templates (every attribute stated) split, fixed and seeded, into
  training and evaluation templates; `trust unlearn`'s default prompts never use an evaluation one.
- Retain scenes: per concept, a fixed, seeded split of the other scenes into *seen* (the default
  retain prompts of a run) and *unseen* (never in training), stratified so that look-alikes (scenes
  sharing part of the concept) are split half and half too.
- Seeds: evaluation images draw from [0, 10^9), everything a run draws (its cached original images
  and its own RNG: saliency trajectories, noise, timesteps) from [10^9, 2*10^9).
- Tasks: defaults may be tuned on DEV_TASKS only; TEST_TASKS are reported, never tuned on.
docs/protocol.md states it in one page.
"""
from __future__ import annotations

import random
import zlib

from trust_unlearn.world.captions import TRAIN_TEMPLATES
from trust_unlearn.world.concepts import FULL_TEMPLATES, Concept, retain_scenes
from trust_unlearn.world.shapes import Scene

PROTOCOL_SEED = 13  # the split's seed: fixed, part of the protocol

TEST_TASKS = ("circle", "red", "red circle", "circle on striped background")
DEV_TASKS = ("square", "green", "blue square", "square on plain background")

EVAL_TEMPLATES = tuple(sorted(random.Random(PROTOCOL_SEED).sample(FULL_TEMPLATES, len(FULL_TEMPLATES) // 2),
                              key=FULL_TEMPLATES.index))
TRAIN_FULL_TEMPLATES = tuple(t for t in FULL_TEMPLATES if t not in EVAL_TEMPLATES)
# every template a run may caption with: the testbed's training templates less the evaluation ones
RUN_TEMPLATES = tuple(t for t in TRAIN_TEMPLATES if t not in EVAL_TEMPLATES)

# seed ranges (half-open): disjoint, so no image a run trained on is ever graded
EVAL_SEEDS = (0, 10**9)
TRAIN_SEEDS = (10**9, 2 * 10**9)
_EVAL_STRIDE = 10**6  # evaluation seed s: target images s*10^6 + k, retain images s*10^6 + 500,000 + k
_TRAIN_STRIDE = 10**6  # training seed s: cached images TRAIN_SEEDS[0] + s*10^6 + k, run RNG the last of them


def evaluation_seeds(eval_seed: int, n: int, part: str) -> list[int]:
    """n image seeds of evaluation seed `eval_seed` for `part` ("target" or "retain")."""
    if not 0 <= eval_seed < EVAL_SEEDS[1] // _EVAL_STRIDE or n > _EVAL_STRIDE // 2:
        raise ValueError(f"evaluation seed {eval_seed} x {n} images is outside the evaluation range")
    base = eval_seed * _EVAL_STRIDE + (0 if part == "target" else _EVAL_STRIDE // 2)
    return [base + k for k in range(n)]


def training_seeds(seed: int, n: int) -> list[int]:
    """n image seeds for a run's cached original-model images (training seed `seed`)."""
    if not 0 <= seed < (TRAIN_SEEDS[1] - TRAIN_SEEDS[0]) // _TRAIN_STRIDE or n >= _TRAIN_STRIDE:
        raise ValueError(f"training seed {seed} x {n} images is outside the training range")
    base = TRAIN_SEEDS[0] + seed * _TRAIN_STRIDE
    return [base + k for k in range(n)]


def run_rng_seed(seed: int) -> int:
    """The seed of a run's own RNG (saliency noise, batches, timesteps): in the training range."""
    training_seeds(seed, 0)  # range check
    return TRAIN_SEEDS[0] + seed * _TRAIN_STRIDE + _TRAIN_STRIDE - 1  # never one of the cached images' seeds


def _split(scenes: list[Scene], key: str) -> tuple[list[Scene], list[Scene]]:
    rng = random.Random(PROTOCOL_SEED * 1_000_003 + zlib.crc32(key.encode()))
    order = scenes[:]
    rng.shuffle(order)
    seen = set(order[: (len(order) + 1) // 2])
    return [s for s in scenes if s in seen], [s for s in scenes if s not in seen]


def retain_split(concept: Concept) -> dict[str, list[Scene]]:
    """{"seen": [...], "unseen": [...]} retain scenes of a concept; look-alikes split half and half."""
    key = ",".join(f"{a}={v}" for a, v in concept.constraints)
    scenes = retain_scenes(concept)
    look = [s for s in scenes if concept.shares_part(s)]
    rest = [s for s in scenes if not concept.shares_part(s)]
    look_seen, look_unseen = _split(look, key + "|lookalike")
    rest_seen, rest_unseen = _split(rest, key + "|other")
    return {"seen": [s for s in scenes if s in set(look_seen + rest_seen)],
            "unseen": [s for s in scenes if s in set(look_unseen + rest_unseen)]}
