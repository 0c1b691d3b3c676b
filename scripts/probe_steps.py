#!/usr/bin/env python
"""Can the stopping rule's probes be cheaper? Its reading at fewer DDIM steps against the default's.

For each model (the original and the unlearned run folders given), the stopping rule's probe reading --
share of target probes the alignment scorer reads as the concept, and the retain probes' mean alignment --
at each of `--steps` sampler steps, on the same probe seeds. A cheaper probe is usable if it reads the
original as the default does (>= 50 % present, the rule's own bar) and agrees with the default on whether
each unlearned model is forgotten (present <= 5 %). Prints a table; --json writes the figures.

Usage: python scripts/probe_steps.py --concept square RUN_DIR ... [--steps 25 10] [--json F]
"""
from __future__ import annotations

import argparse
import json
import time

from trust_unlearn.concept_spec import resolve_spec
from trust_unlearn.evaluation.scorers import load_scorer
from trust_unlearn.methods.base import CommonConfig, RunContext
from trust_unlearn.pipeline import load_model
from trust_unlearn.stopping import StoppingRule


def reading(model_path: str, concept: str, steps: int, probes: int) -> dict:
    model = load_model(model_path)
    ctx = RunContext(model, resolve_spec(concept, is_testbed=model.is_testbed), CommonConfig(probes=probes, probe_steps=steps))
    ctx.scorer = load_scorer(None, model.is_testbed)
    rule = StoppingRule(ctx)
    start = time.perf_counter()
    out = rule.read()
    return {**out, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="*", help="unlearned run folders (the original testbed is always read)")
    parser.add_argument("--concept", required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 10])
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for path in ["testbed", *args.runs]:
        row = {"model": path, "readings": {s: reading(path, args.concept, s, args.probes) for s in args.steps}}
        rows.append(row)
        cells = "  ".join(f"{s} steps: present {r['present']:.2f} retain A {r.get('retain_alignment', float('nan')):.3f} "
                          f"({r['seconds']:.1f} s)" for s, r in row["readings"].items())
        print(f"{path[-60:]:<60}  {cells}", flush=True)
    ref = args.steps[0]
    agree = [all((r["readings"][s]["present"] <= 0.05) == (r["readings"][ref]["present"] <= 0.05) for s in args.steps)
             for r in rows[1:]]
    print(f"forgotten-or-not agrees with {ref} steps on {sum(agree)} of {len(agree)} unlearned models")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"concept": args.concept, "rows": rows, "agree": agree}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
