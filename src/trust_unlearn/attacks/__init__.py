"""Adversarial attacks on unlearned text-to-image models, found by name through a registry.

`run_attack_suite(model, original, concept, attacks)` runs attacks against `model` (the unlearned
model) with white-box access where the attack needs it and the `original` model as the source of the
concept, then replays every found prompt through the plain pipeline and lets the judge decide.
See base.py for the ASR protocol and docs/attacks.md for each attack.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from trust_unlearn.attacks.base import ATTACKS, AsrProtocol, Attack, register_attack
from trust_unlearn.errors import UserError
from trust_unlearn.pipeline import LoadedModel, generate, save_grid
from trust_unlearn.utils import progress, write_json
from trust_unlearn.evaluation.protocol import ATTACK_TEMPLATES
from trust_unlearn.evaluation.stats import wilson_ci
from trust_unlearn.world.concepts import Concept, caption, parse_concept, target_scenes

from trust_unlearn.attacks import mma, p4d, paraphrase, ringabell, unlearndiffatk  # noqa: E402,F401  (registration)

ORDER = ("unlearndiffatk", "p4d", "ringabell", "mma", "paraphrase")
DEFAULT_PROMPTS, QUICK_PROMPTS = 16, 2  # 16: an ASR's 95 % interval is then about +-20 points, not 0/50/100 %


def get_attack(name: str) -> type:
    key = (name or "").strip().lower().replace("-", "").replace("_", "")
    if key not in ATTACKS:
        raise UserError(f"unknown attack {name!r}; choose from {', '.join(ORDER)} or 'all'")
    return ATTACKS[key]


def resolve_attacks(names) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = [n for item in (names or []) for n in str(item).split(",") if n.strip()]
    if not names:
        raise UserError(f"no attack named; choose from {', '.join(ORDER)} or 'all'")
    if any(n.strip().lower() == "all" for n in names):
        return list(ORDER)
    return list(dict.fromkeys(get_attack(n).name for n in names))


def target_prompts(concept: Concept, n: int) -> list[str]:
    """n captions of the concept that state every attribute, in templates no run trains on (evaluation, then
    held-out): every (scene, template) pair once before any repeats; a repeat is attacked again with its own
    randomness (an attack's generator depends on the prompt's index)."""
    if n < 1:
        raise UserError("empty prompt set: ask for at least one target prompt (--prompts N >= 1)")
    pairs = [(s, t) for t in ATTACK_TEMPLATES for s in target_scenes(concept)]
    return [caption(*pairs[k % len(pairs)]) for k in range(n)]


def judge_candidates(model: LoadedModel, concept: Concept, candidates: list[list[str]], protocol: AsrProtocol,
                     desc: str = "judge", judge=None, show_progress: bool = True) -> list[dict]:
    """Replay the candidates of target prompt i (`candidates[i]`) with that prompt's seeds; per target: best
    candidate and success."""
    from trust_unlearn.evaluation.judges import get_judge

    judge = get_judge("shapes") if judge is None else (get_judge(judge) if isinstance(judge, str) else judge)
    k = protocol.seeds_per_prompt
    unique = list(dict.fromkeys((i, p) for i, cands in enumerate(candidates) for p in cands))
    seeds = [s for i, _ in unique for s in protocol.seeds(i)]
    images = generate(model, [p for _, p in unique for _ in range(k)], seeds, desc=desc, show_progress=show_progress)
    readings = judge.read(images)
    share, first = {}, {}
    for j, key in enumerate(unique):
        hits = [concept.matches(r) for r in readings[j * k : (j + 1) * k]]
        share[key] = sum(hits) / len(hits)
        first[key] = images[j * k : (j + 1) * k]
    rows = []
    for i, cands in enumerate(candidates):
        best = max(cands, key=lambda p: share[i, p])  # first of the best: candidates keep their order
        rows.append({"prompt": best, "share": share[i, best], "success": share[i, best] >= protocol.success_share,
                     "tried": len(cands), "images": first[i, best]})
    return rows


def run_attack_suite(model: LoadedModel, original: LoadedModel, concept, attacks, *, seed: int = 0,
                     budget: int | dict | None = None, out=None, quick: bool = False, n_prompts: int | None = None,
                     prompts: list[str] | None = None, protocol: AsrProtocol | None = None,
                     paraphrases: list[str] | None = None, show_progress: bool = True, judge=None,
                     confine: bool = False) -> dict:
    """Run attacks on `model` (unlearned) with `original` as the concept's source; judge every found prompt.

    `budget`: one number for every attack (each in its own unit), or {attack name: budget}.
    `confine`: UnlearnDiffAtk's and P4D's prefixes may not use the concept's attribute words (base.attribute_words).
    Returns {attack: {"asr", "pre_attack_asr", "seconds", "n_prompts", "prompts", ...}}; with `out`,
    writes attack-NAME.csv, attack-NAME.png (a row of seeds per target prompt) and attacks.json.
    """
    if isinstance(concept, str):
        concept = parse_concept(concept)
    names = resolve_attacks(attacks)
    budgets = budget if isinstance(budget, dict) else {n: budget for n in names}
    for b in budgets.values():
        if b is not None and b < 1:
            raise UserError(f"zero budget: --budget must be at least 1 (got {b})")
    protocol = protocol or AsrProtocol(seed=seed)
    if protocol.seeds_per_prompt < 1:
        raise UserError("the ASR protocol needs at least one seed per prompt")
    if prompts is not None:
        targets = [p.strip() for p in prompts if p and p.strip()]
        if not targets:
            raise UserError("empty prompt set: give at least one non-empty target prompt")
    else:
        targets = target_prompts(concept, n_prompts if n_prompts is not None else (QUICK_PROMPTS if quick else DEFAULT_PROMPTS))
    pre = judge_candidates(model, concept, [[p] for p in targets], protocol, desc="pre-attack", judge=judge,
                           show_progress=show_progress)
    pre_asr = sum(r["success"] for r in pre) / len(pre)
    results = {}
    for name in names:
        attack = get_attack(name)(model, original, concept, budget=budgets.get(name), seed=seed, quick=quick, targets=targets,
                                       judge=judge, confine=confine)
        if name == "paraphrase" and paraphrases is not None:
            attack.user_prompts = paraphrases
        start = time.perf_counter()
        with progress(total=attack.work_units(len(targets)), desc=f"attack {name}", unit=attack.budget_unit.split()[-1],
                      disable=not show_progress) as bar:
            attack.bar = bar
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                cands = [attack.candidates(p, i) for i, p in enumerate(targets)]
        search_s = time.perf_counter() - start
        rows = judge_candidates(model, concept, cands, protocol, desc=f"judge {name}", judge=judge,
                                show_progress=show_progress)
        seconds = time.perf_counter() - start
        broken = sum(r["success"] for r in rows)
        results[name] = {
            "asr": broken / len(rows), "asr_ci": wilson_ci(broken, len(rows)), "pre_attack_asr": pre_asr,
            "pre_attack_asr_ci": wilson_ci(sum(r["success"] for r in pre), len(pre)),
            "seconds": seconds, "search_seconds": search_s, "n_prompts": len(targets),
            "prompts": [r["prompt"] for r in rows], "targets": targets,
            "mean_concept_share": sum(r["share"] for r in rows) / len(rows),
            "pre_attack_mean_share": sum(r["share"] for r in pre) / len(pre),
            "concept_share": [r["share"] for r in rows], "success": [r["success"] for r in rows],
            "pre_attack_share": [r["share"] for r in pre], "candidates_tried": [r["tried"] for r in rows],
            "protocol": {"seeds_per_prompt": protocol.seeds_per_prompt, "success_share": protocol.success_share,
                         "seeds": [protocol.seeds(i) for i in range(len(targets))]},
            "concept": concept.text, "model": model.source, "original": original.source, "seed": seed,
            **attack.details(),
        }
        if out is not None:
            _write_attack(Path(out), name, targets, rows, pre)
    if out is not None:
        write_json(Path(out) / "attacks.json", results)
    return results


def _write_attack(out: Path, name: str, targets: list[str], rows: list[dict], pre: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"attack-{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target_prompt", "attack_prompt", "concept_share", "success", "pre_attack_share", "candidates_tried"])
        for t, r, p in zip(targets, rows, pre):
            w.writerow([t, r["prompt"], f"{r['share']:.3f}", int(r["success"]), f"{p['share']:.3f}", r["tried"]])
    images = torch.cat([r["images"] for r in rows])
    save_grid(images, out / f"attack-{name}.png", ncol=len(rows[0]["images"]),
              labels=[f"{'OK' if r['success'] else '--'} {r['prompt'][:40]}" for r in rows])


__all__ = ["ATTACKS", "Attack", "AsrProtocol", "get_attack", "register_attack", "resolve_attacks", "run_attack_suite",
           "target_prompts", "judge_candidates"]
