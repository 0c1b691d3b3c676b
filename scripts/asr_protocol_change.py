"""Each bench cell's ASRs before and after the move to per-prompt attack seeds (2026-12-06), from the old
figures a re-measurement keeps in its top-up record (`attack_topups[-1].replaced`, bench/cells.py merge_topup).

Usage: python scripts/asr_protocol_change.py [--results results/bench/bench.json]
Prints a markdown table: per re-measured cell, pre-attack ASR and each attack's ASR, new (old) in %.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trust_unlearn.attacks import ORDER  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results/bench/bench.json")
    args = ap.parse_args()
    cells = json.loads(Path(args.results).read_text())["cells"]
    print("| task | method | pre-attack | " + " | ".join(ORDER) + " | model reproduced |")
    print("|---" * (4 + len(ORDER)) + "|")
    for c in cells:
        last = (c.get("attack_topups") or [{}])[-1]
        old = last.get("replaced")
        if not old:
            continue
        pct = lambda new, was: f"{100 * new:.0f} ({100 * was:.0f})" if was is not None else f"{100 * new:.0f}"  # noqa: E731
        row = [c["task"], f"`{c['method']}`", pct(c["pre_attack_asr"], old.get("pre_attack_asr"))]
        row += [pct(c["asr"][a], old["asr"].get(a)) if a in c["asr"] else "-" for a in ORDER]
        print("| " + " | ".join(row + ["yes" if last["reproduced"] else "no"]) + " |")


if __name__ == "__main__":
    main()
