#!/usr/bin/env python
"""TRUST's result bar under the evaluation protocol (docs/protocol.md): tasks x regulariser x training seed.

TRUST's cells are the fair benchmark's own (`trust bench`, methods `trust` and `trust:reg=csr`, the
tuned defaults of `trust unlearn`): this script runs the missing ones through the bench runner into its
cells file, so TRUST is measured once, not twice with drifting settings, and resumes cell by cell across
sittings. It then writes the TRUST slice as `results/result-bar.json`, prints mean and 95 % t-interval of
every figure per (task, method), and with `--readme` rewrites the README's TRUST table.

Bars (per task and method, over seeds): mean forget <= 5 % by both judges, mean unrecognised <= 10 %,
mean unseen retain and unseen look-alike retain within 3 points of the original, every run <= 10 minutes.
A run's seconds here (a result-bar cell's `total_seconds`) are the bench cell's wall-clock without its
attacks, plus the original model's evaluation (shared by the bench's cells, which a standalone `trust unlearn`
computes itself) -- an upper bound, since it also holds the bench's checkpoint evaluations. Exit 1 if any bar is missed.

Usage: python scripts/result_bar.py [--seeds 3] [--tasks ...] [--regs cip csr] [--workers 2] [--dev]
       [--attacks none] [--cells results/bench/bench.json] [--readme] [--report-only]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trust_unlearn.bench.cells import ORIGINAL, CellStore
from trust_unlearn.bench.report import protocol_misses
from trust_unlearn.bench.report import summarise as bench_summary
from trust_unlearn.bench.runner import BenchConfig, run_bench
from trust_unlearn.evaluation.protocol import DEV_TASKS, TEST_TASKS
from trust_unlearn.utils import write_json

ROOT = Path(__file__).resolve().parent.parent
UNRECOGNISED_BAR, RUN_SECONDS = 0.10, 600  # beside the bench's protocol bars (bench.report.protocol_misses)
BARS = ("forget", "forget_geometric", "unrecognised", "retain_unseen", "lookalike_unseen", "time")  # table order
README_START, README_END = "<!-- result-bar:start -->", "<!-- result-bar:end -->"
# the protocol's fields of a result-bar cell (issue 13), copied from the bench cell
FIELDS = ("task", "method", "seed", "commit", "source_hash", "settings", "finished", "forget", "forget_before",
          "forget_geometric", "forget_geometric_before", "unrecognised", "unrecognised_before", "anchor_rate",
          "judge_disagreements", "retain_seen", "retain_seen_before", "retain_unseen", "retain_unseen_before",
          "lookalike_seen", "lookalike_seen_before", "lookalike_unseen", "lookalike_unseen_before", "fd_judge",
          "train_seconds", "steps", "max_steps", "stopped_at", "time_to_target_seconds", "peak_rss_mb", "threads")


def method_label(reg: str) -> str:
    """The bench label of TRUST with this regulariser (CIP is TRUST's default)."""
    return "trust" if reg == "cip" else f"trust:reg={reg}"


def _shown(path: Path) -> str:
    """A path as the README and the results file name it: relative to the repository where it lies inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _without_attacks(cell: dict) -> float:
    return cell["total_seconds"] - sum((cell.get("attack_seconds") or {}).values())


def result_cells(cells: list[dict], tasks: list[str], labels: list[str], seeds: int) -> list[dict]:
    """The result bar's cells: TRUST's bench cells with the protocol's fields, `total_seconds` being the run's."""
    originals = {c["task"]: c for c in cells if c["method"] == ORIGINAL and "error" not in c}
    out = []
    for c in cells:
        if c["task"] not in tasks or c["method"] not in labels or c["seed"] >= seeds:
            continue
        if "error" in c:
            out.append({k: c.get(k) for k in ("task", "method", "seed", "commit", "error")})
            continue
        original = originals.get(c["task"])
        run = _without_attacks(c) + _without_attacks(original) if original else None
        out.append({**{k: c.get(k) for k in FIELDS}, "total_seconds": run})
    return sorted(out, key=lambda c: (tasks.index(c["task"]), labels.index(c["method"]), c["seed"]))


def bar_rows(cells: list[dict], tasks: list[str], labels: list[str]) -> list[dict]:
    """Per (task, method): the bench's mean and 95 % interval of every figure, and the bars missed."""
    summary = bench_summary(cells)["tasks"]
    rows = []
    for task in tasks:
        for label in labels:
            row = (summary.get(task) or {}).get("methods", {}).get(label)
            if row is None:
                continue
            group = [c for c in cells if c["task"] == task and c["method"] == label and "error" not in c]
            row = {**row, "task": task, "method": label, "n": len(group)}
            if not group:
                row["missed"] = ["errors"]
                rows.append(row)
                continue
            missed = set(protocol_misses(row))
            if row["unrecognised"]["mean"] > UNRECOGNISED_BAR:
                missed.add("unrecognised")
            if not all(c["total_seconds"] is not None and c["total_seconds"] <= RUN_SECONDS for c in group):
                missed.add("time")
            row["missed"] = [b for b in BARS if b in missed] + (["errors"] if row["errors"] else [])
            rows.append(row)
    return rows


def _fmt(ci: dict | None, pct: bool = True, before: float | None = None) -> str:
    if ci is None:
        return "-"
    k, digits = (100, 1) if pct else (1, 0)
    text = f"{k * ci['mean']:.{digits}f}"
    if ci["n"] > 1:
        text += f" [{k * ci['low']:.{digits}f}, {k * ci['high']:.{digits}f}]"
    return text if before is None else f"{k * before:.{digits}f} → {text}"


def markdown(rows: list[dict]) -> str:
    head = ("| task | method | seeds | forget % | forget, geometric % | unrecognised % | unseen retain % "
            "| unseen look-alike % | seen retain % | train s | run s | bar |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if not r["n"]:
            lines.append(f"| {r['task']} | {r['method']} | 0 | " + "failed | " * 8 + "MISSED |")
            continue
        bar = "ok" if not r["missed"] else "MISSED: " + ", ".join(r["missed"])
        lines.append(
            f"| {r['task']} | {r['method']} | {r['n']} | {_fmt(r['forget'], before=r['forget_before'])} "
            f"| {_fmt(r['forget_geometric'], before=r['forget_geometric_before'])} | {_fmt(r['unrecognised'])} "
            f"| {_fmt(r['retain_unseen'], before=r['retain_unseen_before'])} "
            f"| {_fmt(r['lookalike_unseen'], before=r['lookalike_unseen_before'])} "
            f"| {_fmt(r['retain_seen'], before=r['retain_seen_before'])} | {_fmt(r['train_seconds'], False)} "
            f"| {_fmt(r['total_seconds'], False)} | {bar} |")
    return "\n".join(lines)


def write_readme(table: str, rows: list[dict], results: Path) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"README.md has no {README_START} ... {README_END} block to fill")
    commits = sorted({c[:10] for r in rows for c in r.get("commits", [])})
    note = (f"Generated by `python scripts/result_bar.py --readme` from `{_shown(results)}` "
            f"(commits {', '.join(commits) or '-'}): mean over training seeds [95 % t-interval]; \"a → b\" is the "
            "original model → the unlearned one; run s = the run without attacks, an upper bound of a standalone "
            "`trust unlearn` (scripts/result_bar.py).")
    a, b = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:a] + "\n" + note + "\n\n" + table + "\n" + text[b:])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per task and regulariser (0..N-1)")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the protocol's test tasks")
    parser.add_argument("--dev", action="store_true", help="the protocol's dev tasks (for tuning) instead")
    parser.add_argument("--regs", nargs="+", default=["cip", "csr"])
    parser.add_argument("--workers", type=int, default=2, help="single-threaded runs side by side (one per core)")
    parser.add_argument("--attacks", nargs="+", default=None,
                        help="attacks on seed 0 (default: the bench's, so the cells are the bench's own); 'none'")
    parser.add_argument("--cells", default=None, help="the bench cells file (default results/bench/bench.json, "
                                                      "results/dev/bench.json with --dev: its own folder, as the bench writes its report beside the cells)")
    parser.add_argument("--results", default=None, help="the result bar's file (default results/result-bar.json, "
                                                        "results/result-bar-dev.json with --dev)")
    parser.add_argument("--out", default="runs/bench", help="run folders")
    parser.add_argument("--readme", action="store_true", help="rewrite README's TRUST table from the results file")
    parser.add_argument("--report-only", action="store_true", help="run nothing: summarise the cells file")
    args = parser.parse_args()
    tasks = args.tasks or list(DEV_TASKS if args.dev else TEST_TASKS)
    if not args.dev and set(tasks) & set(DEV_TASKS) or args.dev and set(tasks) & set(TEST_TASKS):
        raise SystemExit("mixing dev and test tasks in one results file: use --dev for dev tasks only")
    cells_path = ROOT / (args.cells or ("results/dev/bench.json" if args.dev else "results/bench/bench.json"))
    results = ROOT / (args.results or ("results/result-bar-dev.json" if args.dev else "results/result-bar.json"))
    labels = [method_label(r) for r in args.regs]
    if not args.report_only:
        cfg = BenchConfig(methods=labels, tasks=tasks, seeds=args.seeds, workers=args.workers, results=str(cells_path),
                          out=args.out)
        if args.attacks is not None:
            cfg.attacks = [] if [a.lower() for a in args.attacks] == ["none"] else args.attacks
        run_bench(cfg)
    cells = result_cells(CellStore(cells_path).cells(), tasks, labels, args.seeds)
    write_json(results, {"protocol": "docs/protocol.md", "source": _shown(cells_path), "cells": cells})
    rows = bar_rows(cells, tasks, labels)
    table = markdown(rows)
    print("\n" + table)
    if args.readme:
        write_readme(table, rows, results)
    return 1 if any(r["missed"] for r in rows) or len(rows) < len(tasks) * len(labels) else 0


if __name__ == "__main__":
    sys.exit(main())
