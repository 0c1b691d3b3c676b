#!/usr/bin/env python
"""TRUST's result bar on the testbed: each concept x regulariser as its own `trust unlearn` process.

Prints the table of README's "Results" section and writes it as JSON and Markdown. Bars (issue 3):
forget rate <= 5 %, retain accuracy (and look-alike retain accuracy) within 3 points of the
original model, each run <= 10 minutes wall-clock. Exit 1 if any bar is missed.
Usage: python scripts/result_bar.py [--out runs/result-bar] [--concepts ...] [--regs cip csr] [-- extra unlearn flags]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONCEPTS = ("circle", "red", "red circle", "circle on striped background")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/result-bar")
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    parser.add_argument("--regs", nargs="+", default=["cip", "csr"])
    parser.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(args.out)
    rows, failed = [], False
    for concept in args.concepts:
        for reg in args.regs:
            run = out / f"{'-'.join(concept.split())}-{reg}"
            cmd = [sys.executable, "-m", "trust_unlearn.cli", "unlearn", "--concept", concept, "--reg", reg,
                   "--seed", str(args.seed), "--out", str(run), "--overwrite", "--json", str(run) + ".json", *extra]
            print("$", " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd)
            total = time.perf_counter() - t0
            if proc.returncode != 0:
                rows.append({"concept": concept, "reg": reg, "error": f"exit {proc.returncode}"})
                failed = True
                continue
            s = json.loads(Path(str(run) + ".json").read_text())
            b, a = s["before"], s["after"]
            row = {
                "concept": concept, "reg": reg, "forget_before": b["forget_rate"], "forget_after": a["forget_rate"],
                "retain_before": b["retain_accuracy"], "retain_after": a["retain_accuracy"],
                "lookalike_before": b.get("lookalike_retain_accuracy"), "lookalike_after": a.get("lookalike_retain_accuracy"),
                "fd_judge": a["fd_judge"], "train_s": s["wall_clock_s"], "total_s": total, "peak_rss_mb": s["peak_rss_mb"],
                "steps": s["steps"], "mean_mask": s["mean_mask_size"], "rows": s["n_trainable_rows"],
            }
            row["passed"] = (row["forget_after"] <= 0.05 and row["retain_after"] >= row["retain_before"] - 0.03
                             and (row["lookalike_after"] is None or row["lookalike_after"] >= row["lookalike_before"] - 0.03)
                             and total <= 600)
            failed |= not row["passed"]
            rows.append(row)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    header = ("| concept | reg | forget before→after % | retain before→after % | look-alike before→after % | FD-judge "
              "| train s | total s | peak RSS MB | steps | mean mask (of rows) | bar |")
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['concept']} | {r['reg']} | {r['error']} |" + " |" * 10)
            continue
        lines.append(
            f"| {r['concept']} | {r['reg']} | {pct(r['forget_before'])} → {pct(r['forget_after'])} "
            f"| {pct(r['retain_before'])} → {pct(r['retain_after'])} | {pct(r['lookalike_before'])} → {pct(r['lookalike_after'])} "
            f"| {r['fd_judge']:.2f} | {r['train_s']:.0f} | {r['total_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['steps']} "
            f"| {r['mean_mask']:.1f} ({r['rows']}) | {'ok' if r['passed'] else 'MISSED'} |")
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result_bar.md").write_text(table + "\n")
    (out / "result_bar.json").write_text(json.dumps(rows, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
