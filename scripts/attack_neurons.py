#!/usr/bin/env python
"""Where the concept survives an attack, in neurons: which cross-attention rows the successful attack prompts
light up at the unlearned weights that the plain target prompts do not, layer by layer (issue 15).

For each bench run folder OUT/TASK/METHOD/seed0 (as `trust bench` writes them) and each attack group -- white-box
(UnlearnDiffAtk, P4D) and text-only (Ring-A-Bell, MMA, paraphrase) -- the successful rows of its attack CSVs give
pairs (target prompt, attack prompt). At the final weights, TRUST's saliency (dA/dθ_CA over the run's short
guided DDIM trajectory, A = alignment of the decoded images with the *target* prompt, as robust TRUST scores its
adversarial states) is summed over every pair for three conditionings:

  plain    the target prompts, noise draw 1
  attack   the attack prompts, noise draw 1 (paired with plain: only the prompt differs)
  plain'   the target prompts, noise draw 2 (the estimate's noise floor)

Each sum gives a mask at the run's xi. Per layer: the rows the attack selects that plain does not ("new"),
against the rows plain' selects that plain does not (what noise alone adds), and how many of the new rows the
run ever selected in training (masks.safetensors). Prints a table; --json writes every figure.

Usage: python scripts/attack_neurons.py [--out runs/bench] [--tasks circle red] [--methods trust trust-robust]
                                        [--draws 2] [--json results/diagnostics/attack_neurons.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import fields
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

GROUPS = {"white-box": ("unlearndiffatk", "p4d"), "text-only": ("ringabell", "mma", "paraphrase")}
TEST_TASKS = ("circle", "red", "red-circle", "circle-on-striped-background")


def successful_pairs(attacks: Path, names: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for name in names:
        path = attacks / f"attack-{name}.csv"
        if path.exists():
            pairs += [(r["target_prompt"], r["attack_prompt"]) for r in csv.DictReader(path.open()) if r["success"] == "1"]
    return pairs


def trained_rows(run: Path) -> dict[str, set[int]]:
    """Per parameter, every row the run selected at some step (the union of its mask history)."""
    history = load_file(run / "masks.safetensors")
    return {name.removesuffix(".indices"): set(t.tolist()) for name, t in history.items() if name.endswith(".indices")}


def build_trust(run: Path):
    """TRUST's saliency machinery on the run's final weights, with the run's saliency settings."""
    from trust_unlearn.concept_spec import ConceptSpec
    from trust_unlearn.evaluation.scorers import load_scorer
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.methods.trust import Trust, TrustConfig
    from trust_unlearn.pipeline import load_model

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model = load_model(str(run))
    ctx = RunContext(model, ConceptSpec(**cfg["spec"]), CommonConfig(seed=cfg["common"]["seed"]))
    ctx.scorer = load_scorer(cfg.get("scorer"), model.is_testbed)
    known = {f.name for f in fields(TrustConfig)}
    trust_cfg = TrustConfig(**{k: v for k, v in cfg["method_args"].items() if k in known})
    return Trust(ctx, trust_cfg), trust_cfg.xi


def summed_saliency(trust, cond_prompts: list[str], score_prompts: list[str], noise: torch.Tensor) -> dict:
    """dA/dθ_CA summed over trajectories conditioned on `cond_prompts`, each scored against its `score_prompts`."""
    from trust_unlearn.methods.base import gradients

    ctx, total = trust.ctx, None
    batch = trust.cfg.saliency_batch
    for i in range(0, len(cond_prompts), batch):
        cond = ctx.text(cond_prompts[i : i + batch])
        cond = torch.cat([ctx.uncond.expand(len(cond), -1, -1), cond])
        latents = trust.saliency_trajectory(cond, noise[i : i + batch])
        grads = gradients(ctx.scorer.score(ctx.decode(latents), score_prompts[i : i + batch]).mean(), trust.params)
        total = grads if total is None else {k: total[k] + g for k, g in grads.items()}
    return total


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def short(param: str) -> str:
    """down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight -> down1.0 k"""
    parts = param.split(".")
    block = parts[0].removesuffix("_blocks").replace("_block", "") + ("" if parts[0] == "mid_block" else parts[1])
    att = parts[parts.index("attentions") + 1]
    return f"{block}.{att} {parts[-2].removeprefix('to_')}"


def analyse(run: Path, draws: int, seed: int) -> dict:
    from trust_unlearn.neurons import concept_neuron_masks, neuron_saliency

    trust, xi = build_trust(run)
    trained = trained_rows(run)
    out = {}
    for group, names in GROUPS.items():
        pairs = successful_pairs(run.parent / "attacks", names) * draws
        if not pairs:
            out[group] = {"successes": 0}
            continue
        targets, attacks = [t for t, _ in pairs], [a for _, a in pairs]
        ctx = trust.ctx
        size = (trust.cfg.saliency_resolution or ctx.model.resolution) // ctx.pipe.vae_scale_factor
        shape = (len(pairs), ctx.unet.config.in_channels, size, size)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + d)) for d in (0, 1)]
        saliency = {"plain": summed_saliency(trust, targets, targets, noise[0]),
                    "attack": summed_saliency(trust, attacks, targets, noise[0]),
                    "plain2": summed_saliency(trust, targets, targets, noise[1])}
        masks = {k: concept_neuron_masks(g, xi) for k, g in saliency.items()}
        layers = {}
        for name in masks["plain"]:
            rows = {k: set(m[name].nonzero().flatten().tolist()) for k, m in masks.items()}
            row_saliency = {k: neuron_saliency(g[name]) for k, g in saliency.items()}
            ever = trained.get(name, set())
            outside = torch.ones(len(row_saliency["plain"]), dtype=torch.bool)
            outside[list(ever)] = False
            new, noise_new = rows["attack"] - rows["plain"], rows["plain2"] - rows["plain"]
            layers[short(name)] = {
                "rows": len(outside), "trained": len(ever), "plain": len(rows["plain"]), "attack": len(rows["attack"]),
                "new": len(new), "noise_new": len(noise_new), "new_trained": len(new & ever),
                # how alike the attack's row saliency is to the plain prompts', against two plain estimates
                "cos_attack": cosine(row_saliency["plain"], row_saliency["attack"]),
                "cos_noise": cosine(row_saliency["plain"], row_saliency["plain2"]),
                # saliency mass on rows training never selected
                "mass_untrained_plain": float(row_saliency["plain"][outside].sum()),
                "mass_untrained_attack": float(row_saliency["attack"][outside].sum()),
                "mass_plain": float(row_saliency["plain"].sum()), "mass_attack": float(row_saliency["attack"].sum())}
        total = {k: sum(v[k] for v in layers.values()) for k in next(iter(layers.values())) if not k.startswith("cos")}
        out[group] = {"successes": len(pairs) // draws, "layers": layers, "total": total}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench", help="the bench's run folders")
    p.add_argument("--tasks", nargs="+", default=list(TEST_TASKS), help="task folder names")
    p.add_argument("--methods", nargs="+", default=["trust", "trust-robust"], help="method folder names")
    p.add_argument("--draws", type=int, default=2, help="noise draws per successful prompt in each estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="results/diagnostics/attack_neurons.json")
    args = p.parse_args()
    found = []
    for task in args.tasks:
        for method in args.methods:
            run = Path(args.out) / task / method / "seed0" / "run"
            if not (run / "masks.safetensors").exists() or not (run.parent / "attacks").is_dir():
                print(f"[skip] {run}: no attacked run folder (run `trust bench` first)")
                continue
            start = time.perf_counter()
            row = {"task": task, "method": method, "groups": analyse(run, args.draws, args.seed)}
            row["seconds"] = round(time.perf_counter() - start, 1)
            found.append(row)
            for group, g in row["groups"].items():
                if not g["successes"]:
                    print(f"{task:30} {method:14} {group:10} no successful prompt")
                    continue
                t = g["total"]
                mean = lambda key: sum(v[key] for v in g["layers"].values()) / len(g["layers"])  # noqa: E731
                top = sorted(g["layers"].items(), key=lambda kv: kv[1]["new"] - kv[1]["noise_new"], reverse=True)[:3]
                where = ", ".join(f"{k} +{v['new']}/{v['noise_new']}" for k, v in top)
                print(f"{task:28} {method:13} {group:9} {g['successes']:2} prompts | rows {t['plain']:3} / {t['attack']:3}"
                      f" | new {t['new']:3} (noise {t['noise_new']:3}), trained {t['new_trained']:3} of them"
                      f" (training touched {t['trained'] / t['rows']:.0%} of rows) | mass off trained rows"
                      f" plain {t['mass_untrained_plain'] / t['mass_plain']:.0%} attack "
                      f"{t['mass_untrained_attack'] / t['mass_attack']:.0%} | row-saliency cosine {mean('cos_attack'):.2f}"
                      f" (noise {mean('cos_noise'):.2f}) | most new: {where}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"source": args.out, "draws": args.draws, "rows": found}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
