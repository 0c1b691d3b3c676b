"""How much an ASR depends on the attacks' image seeds: shared seeds against seeds drawn per target prompt.

Until 2026-12-06 the ASR protocol (attacks/base.py) graded every candidate of every target prompt on the same
4 fixed seeds; this script is the measurement that moved it to 4 seeds per target prompt. A model that leaks its concept only under some initial noises then gets an ASR that mostly says
whether one of those 4 seeds is a leaky one, and the 16 target prompts are not 16 independent draws: the
Wilson interval over prompts does not hold the seeds' share of the error. This script measures the
*pre-attack* ASR (each target prompt its own only candidate, the floor of every attack's ASR) of a model
under both schemes, several draws each:

- shared: draw d grades all target prompts on the same 4 seeds (the earlier protocol's scheme; draw 0 was
  its own seeds, attack seed 0);
- per prompt: draw d gives each target prompt 4 seeds of its own (today's scheme; draws from attack seed 50
  on, so no image is the protocol's own).

Usage: python scripts/attack_seed_check.py --task circle --models RUN_DIR ... [--draws 4] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trust_unlearn.attacks import judge_candidates, target_prompts  # noqa: E402
from trust_unlearn.attacks.base import AsrProtocol  # noqa: E402
from trust_unlearn.bench.cells import git_commit  # noqa: E402
from trust_unlearn.evaluation.judges import get_judge  # noqa: E402
from trust_unlearn.evaluation.protocol import attack_seeds  # noqa: E402
from trust_unlearn.pipeline import load_model  # noqa: E402
from trust_unlearn.world.concepts import parse_concept  # noqa: E402

PROMPTS = 16  # the bench's target prompts per attack


def seed_sets(scheme: str, draw: int, n_prompts: int, per_prompt: int) -> list[list[int]]:
    """Per target prompt, its image seeds (attack seed `draw` of the protocol's range; per-prompt draws use
    the attack seeds from 50 on, so the two schemes never share an image)."""
    if scheme == "shared":
        return [attack_seeds(draw, per_prompt)] * n_prompts
    block = attack_seeds(50 + draw, n_prompts * per_prompt)
    return [block[j * per_prompt:(j + 1) * per_prompt] for j in range(n_prompts)]


@dataclass
class DrawnSeeds(AsrProtocol):
    """The protocol's success rule on seeds of this script's choosing: target prompt i on `sets[i]`."""

    sets: list = field(default_factory=list)

    def seeds(self, prompt_index: int) -> list[int]:
        return self.sets[prompt_index]


def pre_attack(model, concept, prompts: list[str], protocol: AsrProtocol, judge) -> dict:
    """Each target prompt its own only candidate, graded as the attacks grade (attacks.judge_candidates)."""
    rows = judge_candidates(model, concept, [[p] for p in prompts], protocol, desc="pre-attack", judge=judge)
    return {"asr": sum(r["success"] for r in rows) / len(rows), "concept_share": sum(r["share"] for r in rows) / len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    concept, protocol, judge = parse_concept(args.task), AsrProtocol(), get_judge("shapes")
    prompts = target_prompts(concept, PROMPTS)
    rows = []
    for path in args.models:
        model = load_model(path)
        row = {"model": path}
        for scheme in ("shared", "per prompt"):
            draws = [pre_attack(model, concept, prompts,
                                DrawnSeeds(sets=seed_sets(scheme, d, len(prompts), protocol.seeds_per_prompt)), judge)
                     for d in range(args.draws)]
            row[scheme] = draws
        rows.append(row)
        cells = []
        for scheme in ("shared", "per prompt"):
            asr = [100 * d["asr"] for d in row[scheme]]
            share = statistics.mean(100 * d["concept_share"] for d in row[scheme])
            cells.append(f"{statistics.mean(asr):.0f} ({', '.join(f'{a:.0f}' for a in asr)}); images {share:.1f}")
        print(f"| {path} | {cells[0]} | {cells[1]} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"task": args.task, "commit": git_commit(), "prompts": prompts,
                                         "protocol": protocol.__dict__, "draws": args.draws, "models": rows}, indent=1))


if __name__ == "__main__":
    main()
