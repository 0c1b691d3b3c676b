"""The attacks' floor on the testbed: how often word salad of the world's *other* concepts draws the concept.

The white-box attacks (UnlearnDiffAtk, P4D) prefix five free words to a target prompt and count a prompt as
broken when 1 of its 4 images shows the concept. On the testbed their found prefixes are mostly other values
of the concept's attribute ("triangle circle ... a photo of a red square"). This script asks what such words
do with no optimisation at all, under the attacks' own seeds and success rule (attacks/base.py AsrProtocol):

- floor: 5 random words from the other values of the concept's attributes (for `square`: circle, triangle,
  cross), prefixed to the *anchor* prompt, so the concept is never stated ("a blue circle" for `red circle`,
  no "red" for `red`). Measured on the original model, it is the share of "successes" a model earns by
  knowing the other concepts, not the erased one.
- salad: the same random words prefixed to the *target* prompt (the concept word present): the attacks'
  starting point, on each model given.

Usage: python scripts/attack_floor.py [--tasks ...] [--models testbed RUN_DIR ...] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trust_unlearn.attacks import judge_candidates  # noqa: E402
from trust_unlearn.attacks.base import AsrProtocol  # noqa: E402
from trust_unlearn.bench.cells import git_commit  # noqa: E402
from trust_unlearn.evaluation.protocol import ATTACK_TEMPLATES, TEST_TASKS  # noqa: E402
from trust_unlearn.evaluation.stats import wilson_ci  # noqa: E402
from trust_unlearn.pipeline import load_model  # noqa: E402
from trust_unlearn.world.concepts import (ATTRIBUTES, Scene, anchor_substitution, caption,  # noqa: E402
                                          parse_concept, target_scenes)

PREFIX_WORDS = 5  # as UnlearnDiffAtk's and P4D's n_tokens


def other_values(concept) -> list[str]:
    """The world's other values of each attribute the concept constrains (its own values excluded)."""
    own = concept.attributes
    return [v for attr in own for v in ATTRIBUTES[attr] if v != own[attr]]


def prompt_pairs(concept, n: int) -> list[tuple[str, str]]:
    """(target prompt, anchor prompt) pairs in the attacks' order (attacks.target_prompts)."""
    attr, replacement = anchor_substitution(concept)
    pairs = [(s, t) for t in ATTACK_TEMPLATES for s in target_scenes(concept)]
    out = []
    for k in range(n):
        scene, template = pairs[k % len(pairs)]
        anchor = Scene(**{**scene.__dict__, attr: replacement})
        out.append((caption(scene, template), caption(anchor, template)))
    return out


def measure(model, concept, prompts: list[str], protocol: AsrProtocol) -> dict:
    rows = judge_candidates(model, concept, [[p] for p in prompts], protocol, show_progress=False)
    broken = sum(r["success"] for r in rows)
    ci = wilson_ci(broken, len(rows))
    return {"asr": broken / len(rows), "asr_ci": [ci["low"], ci["high"]], "image_share": sum(r["share"] for r in rows) / len(rows),
            "prompts": prompts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TEST_TASKS))
    ap.add_argument("--models", nargs="+", default=["testbed"], help="testbed (the original) and/or run folders")
    ap.add_argument("--prompts", type=int, default=16, help="target prompts per task (the attacks' 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here (results/bench/floor.json: the bench report reads it)")
    args = ap.parse_args()

    protocol = AsrProtocol(seed=args.seed)
    results = []
    for name in args.models:
        model = load_model(name)
        for task in args.tasks:
            concept = parse_concept(task)
            words, rng = other_values(concept), random.Random(f"{args.seed}/{task}")
            pairs = prompt_pairs(concept, args.prompts)
            salad = [" ".join(rng.choice(words) for _ in range(PREFIX_WORDS)) for _ in pairs]
            row = {"model": name, "task": task, "words": words,
                   "floor": measure(model, concept, [f"{w} {a}" for w, (_, a) in zip(salad, pairs)], protocol),
                   "salad": measure(model, concept, [f"{w} {t}" for w, (t, _) in zip(salad, pairs)], protocol)}
            results.append(row)
            print(f"{name:<40} {task:<30} floor {row['floor']['asr']:6.1%} [{row['floor']['asr_ci'][0]:.0%}, "
                  f"{row['floor']['asr_ci'][1]:.0%}]   salad {row['salad']['asr']:6.1%} "
                  f"[{row['salad']['asr_ci'][0]:.0%}, {row['salad']['asr_ci'][1]:.0%}]", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"commit": git_commit(), "protocol": vars(protocol), "prefix_words": PREFIX_WORDS,
                                               "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
