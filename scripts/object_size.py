"""How big the object is in a model's target images, and what the judges read at each size.

Why: after unlearning `circle` the circle-prompt objects shrink (issue 13), and small blurred blobs are
where the judges disagree most. This script puts numbers on it for any set of models: for the protocol's
target images (the evaluation's own prompts and seeds, so the images come from its cache), the geometric
judge's segmented object area, and per area bucket the learned judge's reading -- the concept, the task's
anchor, another shape, or an abstention.

Usage: python scripts/object_size.py --task "circle on striped background" \
           --models testbed runs/bench/circle-on-striped-background/trust/seed0/run ... [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trust_unlearn.bench.cells import git_commit  # noqa: E402
from trust_unlearn.evaluation.evaluate import EvalConfig, build_prompt_sets, cached_generate, model_fingerprint  # noqa: E402
from trust_unlearn.evaluation.geometric import features  # noqa: E402
from trust_unlearn.evaluation.judges import abstained, get_judge  # noqa: E402
from trust_unlearn.pipeline import load_model  # noqa: E402
from trust_unlearn.world.concepts import anchor_concept, parse_concept  # noqa: E402

# object area in px (soft, visible part) at the testbed's 32 px: a circle 8 px across is ~50 px
BUCKETS = [(0, 25), (25, 50), (50, 100), (100, 200), (200, 10_000)]


def reading_class(reading: dict, concept, anchor) -> str:
    if abstained(reading):
        return "none"
    if concept.matches(reading):
        return "concept"
    if anchor.matches(reading):
        return "anchor"
    return "other"


def measure(model_path: str, concept, cfg: EvalConfig) -> dict:
    model = load_model(model_path)
    target, _ = build_prompt_sets(concept, cfg)
    steps, guidance = model.num_inference_steps, model.guidance_scale
    images = cached_generate(model, target, steps, guidance, "target", model_fingerprint(model))
    area = features(images)["area"]  # 0 where no object was found
    readings = get_judge(cfg.judge).read(images)
    anchor = anchor_concept(concept)
    classes = [reading_class(r, concept, anchor) for r in readings]
    buckets = []
    for lo, hi in BUCKETS:
        idx = [k for k, a in enumerate(area) if lo <= a < hi]
        counts = {c: sum(classes[k] == c for k in idx) for c in ("concept", "anchor", "other", "none")}
        buckets.append({"area": [lo, hi], "images": len(idx), **counts})
    others = Counter(" ".join(r[a] for a in ("colour", "shape")) for r, c in zip(readings, classes) if c == "other")
    return {"model": model_path, "images": len(images), "median_area": float(np.median(area)),
            "other_readings": dict(others.most_common()),
            "found": float(np.mean(area > 0)),
            "share": {c: classes.count(c) / len(classes) for c in ("concept", "anchor", "other", "none")},
            "buckets": buckets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--models", nargs="+", default=["testbed"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    concept = parse_concept(args.task)
    cfg = EvalConfig()
    rows = [measure(m, concept, cfg) for m in args.models]
    print(f"task {args.task!r}: target images of the evaluation (anchor: {anchor_concept(concept).text!r})")
    print("| model | median area px | concept % | anchor % | other % (most read) | none % | by area bucket: concept / images |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        by = ", ".join(f"{b['area'][0]}-{b['area'][1]}: {b['concept']}/{b['images']}" for b in r["buckets"] if b["images"])
        s = r["share"]
        print(f"| {r['model']} | {r['median_area']:.0f} | {100 * s['concept']:.1f} | {100 * s['anchor']:.1f} | "
              f"{100 * s['other']:.1f} ({', '.join(list(r['other_readings'])[:2])}) | {100 * s['none']:.1f} | {by} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"task": args.task, "commit": git_commit(), "eval": cfg.__dict__,
                                         "models": rows}, indent=1))


if __name__ == "__main__":
    main()
