#!/usr/bin/env python
"""TRUST's result bar under the evaluation protocol (docs/protocol.md): tasks x regulariser x training seed.

Each cell is its own `trust unlearn` process (single-threaded, `--workers` of them side by side) and is
appended to the committed results file as soon as it finishes, so the bar resumes cell by cell across
sittings: a cell already in the file for the same task, method, seed and extra flags is not run again.
Prints mean and 95 % t-interval of every figure per (task, method), and with `--readme` rewrites the
README's TRUST table from the file. Bars (per task and method, over seeds): mean forget <= 5 % by both
judges, mean unrecognised <= 10 %, mean unseen retain and unseen look-alike retain within 3 points of the
original, every run <= 10 minutes. Exit 1 if any bar is missed.

Usage: python scripts/result_bar.py [--seeds 3] [--tasks ...] [--regs cip csr] [--workers 2] [--dev]
       [--results results/result-bar.json] [--readme] [-- extra unlearn flags]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trust_unlearn.bench.cells import git_commit
from trust_unlearn.evaluation.protocol import DEV_TASKS, TEST_TASKS
from trust_unlearn.evaluation.stats import mean_ci
from trust_unlearn.utils import write_json

ROOT = Path(__file__).resolve().parent.parent
FORGET_BAR, UNRECOGNISED_BAR, RETAIN_SLACK, RUN_SECONDS = 0.05, 0.10, 0.03, 600
README_START, README_END = "<!-- result-bar:start -->", "<!-- result-bar:end -->"
# the figures aggregated over seeds, in table order: (cell key, column title)
FIGURES = (("forget", "forget %"), ("forget_geometric", "forget, geometric judge %"), ("unrecognised", "unrecognised %"),
           ("retain_unseen", "unseen retain %"), ("lookalike_unseen", "unseen look-alike %"),
           ("retain_seen", "seen retain %"), ("train_seconds", "train s"), ("total_seconds", "total s"))


def method_label(reg: str) -> str:
    """The bench label of TRUST with this regulariser (CIP is TRUST's default)."""
    return "trust" if reg == "cip" else f"trust:reg={reg}"


def source_hash() -> str:
    """A digest of the code a TRUST cell depends on: the report flags cells whose code has changed since."""
    h = hashlib.sha256()
    for rel in ("methods/trust.py", "methods/base.py", "concept_spec.py", "evaluation/protocol.py", "evaluation/evaluate.py"):
        h.update((ROOT / "src" / "trust_unlearn" / rel).read_bytes())
    return h.hexdigest()[:12]


def cell_key(cell: dict) -> tuple:
    """What makes two cells the same measurement: task, method, seed and the extra unlearn flags."""
    return cell["task"], cell["method"], cell["seed"], tuple(cell.get("extra", []))


def load_cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"] if path.exists() else []


def run_cell(task: str, reg: str, seed: int, extra: list[str], out: Path) -> dict:
    """One `trust unlearn` process, single-threaded; returns its cell."""
    run = out / f"{'-'.join(task.split())}-{reg}-seed{seed}"
    cmd = [sys.executable, "-m", "trust_unlearn.cli", "--threads", "1", "unlearn", "--concept", task, "--reg", reg,
           "--seed", str(seed), "--out", str(run), "--overwrite", "--json", f"{run}.json", *extra]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    with open(f"{run}.log", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    total = time.perf_counter() - started
    if proc.returncode != 0:
        return {**cell_header(task, reg, seed, extra), "error": f"exit {proc.returncode} (see {run}.log)"}
    return cell_from_summary(task, reg, seed, extra, json.loads(Path(f"{run}.json").read_text()), total)


def cell_header(task: str, reg: str, seed: int, extra: list[str]) -> dict:
    return {"task": task, "method": method_label(reg), "seed": seed, "extra": extra, "commit": git_commit(),
            "source_hash": source_hash(), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def cell_from_summary(task: str, reg: str, seed: int, extra: list[str], s: dict, total: float) -> dict:
    """A results cell from `trust unlearn`'s summary (its --json) and the run's wall-clock seconds."""
    b, a = s["before"], s["after"]
    return {
        **cell_header(task, reg, seed, extra),
        "forget": a["forget_rate"], "forget_before": b["forget_rate"],
        "forget_geometric": a.get("forget_rate_geometric"), "forget_geometric_before": b.get("forget_rate_geometric"),
        "unrecognised": a["unrecognised"], "unrecognised_before": b["unrecognised"],
        "unrecognised_geometric": a.get("unrecognised_geometric"), "anchor_rate": a["anchor_rate"],
        "judge_disagreements": a.get("judge_disagreements", {}).get("count"),
        "retain_seen": a["retain_seen"], "retain_seen_before": b["retain_seen"],
        "retain_unseen": a["retain_unseen"], "retain_unseen_before": b["retain_unseen"],
        "lookalike_seen": a["lookalike_seen"], "lookalike_seen_before": b["lookalike_seen"],
        "lookalike_unseen": a["lookalike_unseen"], "lookalike_unseen_before": b["lookalike_unseen"],
        "fd_judge": a["fd_judge"], "train_seconds": s["wall_clock_s"], "total_seconds": total,
        "peak_rss_mb": s["peak_rss_mb"], "steps": s["steps"], "mean_mask": s["mean_mask_size"],
        "rows": s["n_trainable_rows"], "threads": 1,
    }


def summarise(cells: list[dict], tasks, methods) -> list[dict]:
    """Per (task, method): mean and 95 % interval of every figure, the original's figures, the bar."""
    rows = []
    for task in tasks:
        for method in methods:
            group = [c for c in cells if c["task"] == task and c["method"] == method and "error" not in c]
            errors = [c for c in cells if c["task"] == task and c["method"] == method and "error" in c]
            if not group:
                if errors:
                    rows.append({"task": task, "method": method, "errors": len(errors), "n": 0})
                continue
            row = {"task": task, "method": method, "n": len(group), "errors": len(errors),
                   "seeds": sorted(c["seed"] for c in group), "commits": sorted({c["commit"] for c in group}),
                   "source_hashes": sorted({c["source_hash"] for c in group})}
            for key, _ in FIGURES:
                row[key] = mean_ci([c.get(key) for c in group])
            for key in ("retain_unseen", "lookalike_unseen", "forget", "forget_geometric", "retain_seen"):
                row[f"{key}_before"] = group[0].get(f"{key}_before")  # the original: the same images in every cell
            bars = {
                "forget": row["forget"]["mean"] <= FORGET_BAR,
                "forget_geometric": row["forget_geometric"] is None or row["forget_geometric"]["mean"] <= FORGET_BAR,
                "unrecognised": row["unrecognised"]["mean"] <= UNRECOGNISED_BAR,
                "retain_unseen": row["retain_unseen"]["mean"] >= row["retain_unseen_before"] - RETAIN_SLACK,
                "lookalike_unseen": row["lookalike_unseen"] is None
                or row["lookalike_unseen"]["mean"] >= row["lookalike_unseen_before"] - RETAIN_SLACK,
                "time": max(c["total_seconds"] for c in group) <= RUN_SECONDS,
            }
            row["missed"] = [k for k, ok in bars.items() if not ok] + (["errors"] if errors else [])
            rows.append(row)
    return rows


def _fmt(ci: dict | None, pct: bool = True, before: float | None = None) -> str:
    if ci is None:
        return "-"
    k = 100 if pct else 1
    digits = 1 if pct else 0
    text = f"{k * ci['mean']:.{digits}f}"
    if ci["n"] > 1:
        text += f" [{k * ci['low']:.{digits}f}, {k * ci['high']:.{digits}f}]"
    return text if before is None else f"{k * before:.{digits}f} → {text}"


def markdown(rows: list[dict]) -> str:
    head = ("| task | method | seeds | forget % | forget, geometric % | unrecognised % | unseen retain % "
            "| unseen look-alike % | seen retain % | train s | total s | bar |")
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


def write_readme(table: str, rows: list[dict]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text:
        raise SystemExit(f"README.md has no {README_START} ... {README_END} block to fill")
    commits = sorted({c for r in rows for c in r.get("commits", [])})
    note = (f"Generated by `python scripts/result_bar.py --readme` from `results/result-bar.json` "
            f"(commits {', '.join(c[:10] for c in commits)}): mean over training seeds [95 % t-interval]; "
            "\"a → b\" is the original model → the unlearned one.")
    a, b = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:a] + "\n" + note + "\n\n" + table + "\n" + text[b:])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per task and regulariser (0..N-1)")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the protocol's test tasks")
    parser.add_argument("--dev", action="store_true", help="the protocol's dev tasks (for tuning) instead")
    parser.add_argument("--regs", nargs="+", default=["cip", "csr"])
    parser.add_argument("--workers", type=int, default=2, help="single-threaded runs side by side (one per core)")
    parser.add_argument("--results", default=None, help="cells file (default results/result-bar.json, "
                                                          "results/result-bar-dev.json with --dev)")
    parser.add_argument("--out", default="runs/result-bar", help="run folders")
    parser.add_argument("--readme", action="store_true", help="rewrite README's TRUST table from the results file")
    parser.add_argument("--report-only", action="store_true", help="run nothing: summarise the results file")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    tasks = args.tasks or list(DEV_TASKS if args.dev else TEST_TASKS)
    if not args.dev and set(tasks) & set(DEV_TASKS) or args.dev and set(tasks) & set(TEST_TASKS):
        raise SystemExit("mixing dev and test tasks in one results file: use --dev for dev tasks only")
    results = ROOT / (args.results or ("results/result-bar-dev.json" if args.dev else "results/result-bar.json"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(results)
    done = {cell_key(c) for c in cells if "error" not in c}
    todo = [(t, r, s) for s in range(args.seeds) for t in tasks for r in args.regs
            if (t, method_label(r), s, tuple(extra)) not in done]
    if not args.report_only and todo:
        print(f"{len(todo)} cells to run ({len(done)} in {results.name} already), {args.workers} at a time", flush=True)
        lock = threading.Lock()

        def one(job):
            cell = run_cell(*job, extra, out)
            with lock:
                kept = [c for c in load_cells(results) if cell_key(c) != cell_key(cell)]
                write_json(results, {"protocol": "docs/protocol.md", "cells": kept + [cell]})
            print(f"[result-bar] {cell['task']} / {cell['method']} / seed {cell['seed']}: "
                  + (cell.get("error") or f"forget {cell['forget']:.1%}, unseen retain {cell['retain_unseen_before']:.1%} → "
                     f"{cell['retain_unseen']:.1%}, {cell['total_seconds']:.0f} s"), flush=True)

        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(one, todo))
    cells = [c for c in load_cells(results) if tuple(c.get("extra", [])) == tuple(extra)]
    rows = summarise(cells, tasks, [method_label(r) for r in args.regs])
    table = markdown(rows)
    print("\n" + table)
    (out / "result_bar.md").write_text(table + "\n")
    if args.readme:
        write_readme(table, rows)
    return 1 if any(r.get("missed", True) for r in rows) or len(rows) < len(tasks) * len(args.regs) else 0


if __name__ == "__main__":
    sys.exit(main())
