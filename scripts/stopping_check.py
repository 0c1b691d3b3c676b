#!/usr/bin/env python
"""When should TRUST stop? The stopping rule's probe readings against the judge, on the dev tasks.

Runs (resumably, through `trust bench`) TRUST CIP and CSR at their tuned settings on the four dev tasks,
training seed 0, with the stopping rule probing every 25 steps but never stopping (`stop: false`) and
the bench's checkpoint evaluation at every probe step. Then it replays candidate rules on the logged
probes -- `stop_patience` consecutive forgotten readings, each with at most `stop_forget` of the 16
target probes read as the concept and retain intact, a probe counted
forgotten only when the scorer prefers a rival caption by more than `stop_margin` -- and reads the judge
at the step each rule would have stopped. The rival is the anchor (`against: anchor`, the first rule) or
the best of the concept's contrasts (`against: contrasts`, stopping.py's rule since the scorer of 307ab48).
Retain reads intact when the retain probes' mean alignment drifted at most `drift` (relative) below the
original's (`alignment`, stopping.py's rule), or -- on cells that logged `retain_margins` (since 2026-12-07) --
when the share of retain probes the scorer reads as their own caption, against every other scene's, fell at
most `drop` below the original's (`zero-shot`, the judge's retain question).

Selection rule (declared before the runs): a rule is *safe* on a cell when, at its stop step, the judge's
forget rate is at most max(5 %, the forget rate at the maximum step) and the unseen-retain drop at most
max(3 points, the drop at the maximum step), i.e. stopping cost no forgetting and no retain that the
full run would have had. Among the rules safe on every dev cell, the one with the lowest mean stop step
wins; ties to contrasts, then to the zero-shot retain reading, then the smaller patience, the smaller
stop_forget, the smaller drift or drop, the smaller margin (ties among the retain readings were added before
any cell logged `retain_margins`). Prints a table; --json writes it.

Usage: python scripts/stopping_check.py [--report-only] [--threads 1] [--json F]
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from trust_unlearn.bench.cells import FORGET_TARGET, RETAIN_SLACK, meets_target
from trust_unlearn.evaluation.protocol import DEV_TASKS
from trust_unlearn.methods.base import CommonConfig
from trust_unlearn.stopping import MIN_PRESENT_BEFORE
from trust_unlearn.utils import write_json

# the cells of the first choice (the old scorer, anchor readings only) stay in results/diagnostics/stopping.json
RESULTS = Path("results/diagnostics/stopping_contrasts.json")
PATIENCE = (1, 2, 3)
STOP_FORGET = (0.05, 0.07, 0.13)  # of 16 probes: none, at most one, at most two read as the concept
MARGINS = (0.0, 0.05, 0.1, 0.2)  # the scorer's margins A(x, c) - A(x, a) run from about +0.4 to -0.4
DRIFTS = (0.02, 0.05, 0.1)  # retain alignment's relative drop
DROPS = (1 / 16, 2 / 16, 3 / 16)  # of 16 retain probes: one, two, three fewer read as their own caption
RETAIN = tuple(("zero-shot", d) for d in DROPS) + tuple(("alignment", d) for d in DRIFTS)
AGAINST = ("contrasts", "anchor")
MARGIN_FIELD = {"contrasts": "contrast_margins", "anchor": "margins"}


def bench_config():
    from trust_unlearn.bench.runner import BenchConfig

    return BenchConfig(methods=["trust", "trust:reg=csr"], tasks=list(DEV_TASKS), seeds=1, attacks=[],
                       checkpoints=[25, 50, 75, 100, 125, 150, 175], common={"stop": False}, workers=2,
                       out="runs/stopdiag", results=str(RESULTS), rerun_stale=True)


def replay(cell: dict, patience: int, stop_forget: float, margin: float,
           retain: tuple = ("alignment", CommonConfig.stop_retain_drift), against: str = "contrasts") -> int:
    """The step at which the rule would have stopped this run (its max if never): StoppingRule.probe's
    decision, read off the logged margins."""
    def present(reading):  # StoppingRule.read's present share, at this margin
        margins = reading[MARGIN_FIELD[against]]
        return sum(m > -margin for m in margins) / len(margins)

    def read_own(reading):  # share of retain probes the scorer reads as their own caption
        return sum(m > 0 for m in reading["retain_margins"]) / len(reading["retain_margins"])

    def intact(probe):
        kind, bound = retain
        if kind == "alignment":
            return probe["retain_drift"] <= bound
        return read_own(probe) >= read_own(cell["probe_before"]) - bound - 1e-9

    if present(cell["probe_before"]) < MIN_PRESENT_BEFORE:  # the rule's own guard: an unreadable concept never stops
        return cell["max_steps"]
    streak = 0
    for probe in cell["probes"]:
        forgotten = present(probe) <= stop_forget and intact(probe)
        streak = streak + 1 if forgotten else 0
        if streak >= patience:
            return probe["step"]
    return cell["max_steps"]


def judge_at(cell: dict, step: int) -> dict:
    return next(p for p in cell["curve"] if p["step"] == step)


def analyse(cells: list[dict]) -> dict:
    runs = [c for c in cells if c["method"] != "original" and "error" not in c and c.get("probes")]
    rows = []
    drop = lambda p: p["retain_unseen_before"] - p["retain_unseen"]  # noqa: E731
    zero_shot = all("retain_margins" in c["probe_before"] for c in runs)
    for against, patience, stop_forget, retain, margin in itertools.product(AGAINST, PATIENCE, STOP_FORGET, RETAIN, MARGINS):
        if retain[0] == "zero-shot" and not zero_shot:
            continue
        stops, safe, forget_at_stop, drop_at_stop = [], [], [], []
        for c in runs:
            step = replay(c, patience, stop_forget, margin, retain, against)
            point, final = judge_at(c, step), judge_at(c, c["max_steps"])
            stops.append(step)
            forget_at_stop.append(point["forget"])
            drop_at_stop.append(drop(point))
            safe.append(point["forget"] <= max(FORGET_TARGET, final["forget"])
                        and drop(point) <= max(RETAIN_SLACK, drop(final)))
        rows.append({"against": against, "patience": patience, "stop_forget": stop_forget, "retain": retain[0],
                     "drift": retain[1], "margin": margin,
                     "stops": stops, "mean_stop": sum(stops) / len(stops),
                     "safe_cells": sum(safe), "cells": len(runs),
                     "mean_forget_at_stop": sum(forget_at_stop) / len(runs),
                     "mean_retain_drop_at_stop": sum(drop_at_stop) / len(runs)})
    safe_rows = [r for r in rows if r["safe_cells"] == r["cells"]]
    choice = (min(safe_rows, key=lambda r: (r["mean_stop"], AGAINST.index(r["against"]), r["patience"],
                                            r["retain"] != "zero-shot",
                                            r["stop_forget"], r["drift"], r["margin"])) if safe_rows else None)
    per_cell = [{"task": c["task"], "method": c["method"], "max_steps": c["max_steps"],
                 "first_on_target": next((p["step"] for p in c["curve"] if meets_target(p)), None),
                 "judge_forget": {p["step"]: round(p["forget"], 3) for p in c["curve"]},
                 "probe_present": {p["step"]: p["present"] for p in c["probes"]},
                 "probe_retain_drift": {p["step"]: round(p["retain_drift"], 4) for p in c["probes"]},
                 "probe_min_rival_preference": {p["step"]: round(-max(p["contrast_margins"]), 4) for p in c["probes"]}}
                for c in runs]
    return {"rule": __doc__.split("Selection rule")[1].split("Usage")[0].strip(), "runs": per_cell, "grid": rows,
            "choice": choice and {"against": choice["against"], "stop_patience": choice["patience"],
                                  "stop_forget": choice["stop_forget"], "retain": choice["retain"], "retain_bound": choice["drift"],
                                  "stop_margin": choice["margin"]}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report-only", action="store_true", help="replay the committed cells, run nothing")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not args.report_only:
        from trust_unlearn.bench.runner import run_bench

        run_bench(bench_config())
    cells = json.loads(RESULTS.read_text())["cells"]
    result = analyse(cells)
    for run in result["runs"]:
        print(f"{run['task']:<28} {run['method']:<14} on target at {run['first_on_target']}  judge forget "
              + " ".join(f"{s}:{f:.0%}" for s, f in run["judge_forget"].items()))
        print(f"{'':<43} probe present " + " ".join(f"{s}:{p:.0%}" for s, p in run["probe_present"].items()))
        print(f"{'':<43} retain drift  " + " ".join(f"{s}:{d:.1%}" for s, d in run["probe_retain_drift"].items()))
    print(f"\n{'against':>9} {'patience':>8} {'forget':>6} {'retain':>9} {'bound':>5} {'margin':>7} {'mean stop':>9} {'safe':>6} {'forget@stop':>11} {'drop@stop':>9}  stops")
    for r in result["grid"]:
        print(f"{r['against']:>9} {r['patience']:>8} {r['stop_forget']:>6.2f} {r['retain']:>9} {r['drift']:>5.3f} {r['margin']:>7.3f} {r['mean_stop']:>9.1f} {r['safe_cells']:>3}/{r['cells']:<2} "
              f"{r['mean_forget_at_stop']:>11.1%} {r['mean_retain_drop_at_stop']:>9.1%}  {r['stops']}")
    print(f"\nchoice: {result['choice']}")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
