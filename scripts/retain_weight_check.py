#!/usr/bin/env python
"""Is SalUn's (and ESD-u's, AdvUnlearn's) retain cost on the testbed our bug or the method's? Controlled runs.

On one dev task (default `green`), lr 1e-5, 100 steps, training seed 0, each variant is a `trust unlearn`
run graded with the bench's checkpoint-sized evaluation plus the seen retain scenes:
  salun-noop        lr 1e-9: must leave every figure unchanged (pipeline, cache and evaluation are sound)
  salun-ref         the reference's alpha = 0.1
  salun-forgetonly  alpha = 0: the forget term alone
  salun-retainonly  alpha = 1e6: the retain term alone (Adam is scale-free, so this is retain only)
  salun-alpha0.5    the reference README's alpha for class forgetting
  salun-alpha2      TRUST's retain weight
  esdu-ref          ESD-u at the same lr and length (it has no retain term)
  advunlearn-noop   AdvUnlearn at lr 1e-9: its trained text encoder, saved and loaded, changes nothing
  advunlearn-ref    AdvUnlearn as tuned (lr 1e-5, 100 steps: the same as every variant here), retain_loss_w 1
  advunlearn-noattack  warm-up 99 of the 100 steps (one attacked step; the method refuses none): ESD on the text
                       encoder with the retain term
  advunlearn-forgetonly  retain_loss_w = 0
  advunlearn-retain5     retain_loss_w = 5
Each variant's figures go to the results file with the commit that ran it; variants already there are
skipped (resumable). Prints a table.

Usage: python scripts/retain_weight_check.py [--concept green] [--out runs/retain-weight]
       [--results results/diagnostics/retain_weight.json] [--threads 1] [--variants advunlearn-ref ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from trust_unlearn.bench.cells import git_commit
from trust_unlearn.utils import write_json

VARIANTS = {
    "salun-noop": ["--method", "salun", "--lr", "1e-9"],
    "salun-ref": ["--method", "salun"],
    "salun-forgetonly": ["--method", "salun", "--method-arg", "alpha=0"],
    "salun-retainonly": ["--method", "salun", "--method-arg", "alpha=1.0e6"],
    "salun-alpha0.5": ["--method", "salun", "--method-arg", "alpha=0.5"],
    "salun-alpha2": ["--method", "salun", "--method-arg", "alpha=2.0"],
    "esdu-ref": ["--method", "esd-u"],
    "advunlearn-noop": ["--method", "advunlearn", "--lr", "1e-9"],
    "advunlearn-ref": ["--method", "advunlearn"],
    "advunlearn-noattack": ["--method", "advunlearn", "--method-arg", "warmup_steps=99"],
    "advunlearn-forgetonly": ["--method", "advunlearn", "--method-arg", "retain_loss_w=0"],
    "advunlearn-retain5": ["--method", "advunlearn", "--method-arg", "retain_loss_w=5"],
}
EVAL = ["--eval-arg", "target_seeds=4", "--eval-arg", "retain_seeds=8", "--eval-arg", "seen=true"]
FIGURES = ("forget_rate", "unrecognised", "anchor_rate", "retain_seen", "retain_unseen", "retain_unseen_shape",
           "retain_unseen_colour")


def run_variant(name: str, args, out: Path) -> dict:
    summary = out / f"{name}.json"
    cmd = [sys.executable, "-m", "trust_unlearn.cli", "--threads", str(args.threads), "unlearn", "--concept",
           args.concept, "--steps", "100", "--lr", "1e-5", "--no-stop", "--seed", "0", "--out", str(out / name),
           "--overwrite", "--json", str(summary), *EVAL, *VARIANTS[name]]  # a variant's own --lr comes last, wins
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    s = json.loads(summary.read_text())
    return {"variant": name, "concept": args.concept, "commit": git_commit(), "command": cmd[2:],
            "before": {k: s["before"][k] for k in FIGURES}, "after": {k: s["after"][k] for k in FIGURES},
            "wall_clock_seconds": s["wall_clock_s"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="green")
    parser.add_argument("--out", default="runs/retain-weight")
    parser.add_argument("--results", default="results/diagnostics/retain_weight.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="variants to run (default: all)")
    args = parser.parse_args()
    path = Path(args.results)
    data = json.loads(path.read_text()) if path.exists() else {"cells": []}
    done = {c["variant"] for c in data["cells"] if c["concept"] == args.concept}
    for name in args.variants:
        if name not in done:
            data["cells"].append(run_variant(name, args, Path(args.out)))
            write_json(path, data)
    print(f"{'variant':<18} " + " ".join(f"{k:>20}" for k in FIGURES))
    for c in data["cells"]:
        print(f"{c['variant']:<18} " + " ".join(f"{c['before'][k]:>9.1%} -> {c['after'][k]:>6.1%}" for k in FIGURES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
