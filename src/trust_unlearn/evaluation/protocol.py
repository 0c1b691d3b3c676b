"""The evaluation protocol: what a run may see, what only the evaluation sees, and which tasks report.

- Templates: the full-caption templates (every attribute stated) split, fixed and seeded, into
  training and evaluation templates; `trust unlearn`'s default prompts never use an evaluation one.
- Retain scenes: per concept, a fixed, seeded split of the other scenes into *seen* (the default
  retain prompts of a run) and *unseen* (never in training), stratified so that look-alikes (scenes
  sharing part of the concept) are split half and half too.
- Seeds: evaluation images draw from [0, 10^9), everything a run draws (its cached original images,
  its stopping rule's probe images and its own RNG: saliency trajectories, noise, timesteps) from
  [10^9, 2*10^9).
- Attacks: target prompts in the evaluation and held-out templates (never a run's prompt); each target
  prompt has its own image seeds, which grade it and every prompt an attack finds for it, drawn from
  evaluation seeds 900.. of [0, 10^9), which no evaluation uses.
- Tasks: defaults may be tuned on DEV_TASKS only; TEST_TASKS are reported, never tuned on.
docs/protocol.md states it in one page.
"""
from __future__ import annotations

import random
import zlib

from trust_unlearn.world.captions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES
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

# attack target prompts: templates no run captions with (evaluation, then the held-out paraphrase templates)
ATTACK_TEMPLATES = EVAL_TEMPLATES + HELDOUT_TEMPLATES

# seed ranges (half-open): disjoint, so no image a run trained on is ever graded
EVAL_SEEDS = (0, 10**9)
TRAIN_SEEDS = (10**9, 2 * 10**9)
_EVAL_STRIDE = 10**6  # evaluation seed s: target images s*10^6 + k, retain images s*10^6 + 500,000 + k
_TRAIN_STRIDE = 10**6  # training seed s: cached images TRAIN_SEEDS[0] + s*10^6 + k, run RNG the last of them
_PROBE_OFFSET = _TRAIN_STRIDE // 2  # ... and the stopping rule's probe images from + 500,000


def evaluation_seeds(eval_seed: int, n: int, part: str) -> list[int]:
    """n image seeds of evaluation seed `eval_seed` for `part` ("target" or "retain")."""
    if not 0 <= eval_seed < _ATTACK_EVAL_SEED or n > _EVAL_STRIDE // 2:
        raise ValueError(f"evaluation seed {eval_seed} x {n} images is outside the evaluation range")
    base = eval_seed * _EVAL_STRIDE + (0 if part == "target" else _EVAL_STRIDE // 2)
    return [base + k for k in range(n)]


_ATTACK_EVAL_SEED = 900  # evaluation seeds 900.. of the evaluation range grade attacks; evaluations use 0..


def attack_seeds(seed: int, n: int, first: int = 0) -> list[int]:
    """n image seeds, from the `first`-th on, of the block that grades an attack run with seed `seed` (evaluation
    range, disjoint from every evaluation's images as long as evaluations use evaluation seeds below 900)."""
    if not 0 <= seed < EVAL_SEEDS[1] // _EVAL_STRIDE - _ATTACK_EVAL_SEED or first < 0 or first + n > _EVAL_STRIDE:
        raise ValueError(f"attack seed {seed}, images {first}..{first + n} is outside the attack part of the evaluation range")
    base = (_ATTACK_EVAL_SEED + seed) * _EVAL_STRIDE + first
    return [base + k for k in range(n)]


def _training_base(seed: int) -> int:
    if not 0 <= seed < (TRAIN_SEEDS[1] - TRAIN_SEEDS[0]) // _TRAIN_STRIDE:
        raise ValueError(f"training seed {seed} is outside the training range")
    return TRAIN_SEEDS[0] + seed * _TRAIN_STRIDE


def training_seeds(seed: int, n: int) -> list[int]:
    """n image seeds for a run's cached original-model images (training seed `seed`)."""
    if n > _PROBE_OFFSET:
        raise ValueError(f"{n} images do not fit one training seed's range ({_PROBE_OFFSET} at most)")
    base = _training_base(seed)
    return [base + k for k in range(n)]


def probe_seeds(seed: int, n: int) -> list[int]:
    """n image seeds for the stopping rule's probe generations (training seed `seed`): training-range
    seeds, disjoint from the cached images', so the rule never looks at an evaluation image."""
    if n > _PROBE_OFFSET - 16:
        raise ValueError(f"{n} probe images do not fit one training seed's range")
    base = _training_base(seed) + _PROBE_OFFSET
    return [base + k for k in range(n)]


def run_rng_seed(seed: int, stream: int = 0) -> int:
    """The seed of a run's own RNG (stream 0: saliency noise, batches, timesteps; stream 1: the independent
    saliency estimate that measures the mask's noise floor): in the training range, never an image seed."""
    if not 0 <= stream < 16:
        raise ValueError(f"RNG stream {stream} is not one of 0..15")
    return _training_base(seed) + _TRAIN_STRIDE - 1 - stream


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
