#!/usr/bin/env python
"""Which words the attacks add to bring a concept back: per (task, method, attack) of a bench's run folders,
the words of the successful attack prompts that are not in their target prompt, counted once per prompt.

Reads OUT/TASK/METHOD/seedN/attacks/attack-NAME.csv (and OUT/TASK/original/attacks/...), as `trust bench`
writes them; prints a table and writes --json (default results/diagnostics/attack_words.json).

Usage: python scripts/attack_words.py [--out runs/bench] [--tasks red circle] [--top 4] [--json PATH]
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path


def added_words(target: str, attack: str) -> set[str]:
    return set(attack.lower().replace(target.lower(), " ").replace(",", " ").split()) - set(target.lower().split())


def count(csv_path: Path, top: int) -> dict:
    rows = list(csv.DictReader(csv_path.open()))
    hits = [r for r in rows if r["success"] == "1"]
    words = collections.Counter(w for r in hits for w in added_words(r["target_prompt"], r["attack_prompt"]))
    return {"successes": len(hits), "prompts": len(rows), "top_words": dict(words.most_common(top))}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/bench", help="the bench's run folders")
    p.add_argument("--tasks", nargs="+", default=None, help="task folder names (default: every one)")
    p.add_argument("--top", type=int, default=4)
    p.add_argument("--json", default="results/diagnostics/attack_words.json")
    args = p.parse_args()
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"no run folders at {out}: run `trust bench` first (or pass --out)")
    found = []
    for task in sorted(d for d in out.iterdir() if d.is_dir() and (not args.tasks or d.name in args.tasks)):
        for path in sorted(task.glob("*/seed0/attacks/attack-*.csv")) + sorted(task.glob("original/attacks/attack-*.csv")):
            method = path.parts[-4] if path.parts[-3] == "seed0" else "original"
            found.append({"task": task.name, "method": method, "attack": path.stem.removeprefix("attack-"),
                          **count(path, args.top)})
    for f in found:
        words = ", ".join(f"{w} {n}" for w, n in f["top_words"].items()) or "-"
        print(f"{f['task']:12} {f['method']:16} {f['attack']:15} {f['successes']:2}/{f['prompts']:<2}  {words}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"source": str(out), "rows": found}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
