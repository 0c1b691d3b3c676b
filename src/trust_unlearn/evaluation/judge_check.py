"""`trust testbed judges`: how well each judge reads the world's own renders, by size, and when it abstains.

Fresh seeded renders (seeds of their own, never a training or evaluation image) over every size a
generator may produce, fully inside the frame and up to 30 % outside it; accuracy per size bucket
(diameter in pixels). Bars: >= 98 % shape accuracy on clean renders in every bucket from 6 px up, and
<= 1 % of clean renders abstained on. Abstention is also measured on what should be abstained on:
empty backgrounds (shape and colour "none") and amorphous blobs (shape "none").
"""
from __future__ import annotations

import torch

from trust_unlearn.evaluation.judges import abstained, get_judge
from trust_unlearn.testbed.networks import NONE
from trust_unlearn.world.shapes import IMAGE_SIZE, JUDGE_RADIUS, all_scenes, render

BUCKETS_PX = ((4, 6), (6, 8), (8, 11), (11, 14), (14, 18), (18, 22), (22, 27.2))
SHAPE_BAR, ABSTAIN_BAR, BAR_FROM_PX = 0.98, 0.01, 6
CHECK_SEED = 5_000_000_000  # outside the evaluation and training ranges of evaluation/protocol.py


def _cycled_scenes(n: int) -> list:
    """n scenes, every scene of the world in turn (equal shares of shapes, colours, backgrounds)."""
    return (all_scenes() * (n // len(all_scenes()) + 1))[:n]


def _bucket_renders(lo_px: float, hi_px: float, n: int, overhang: float, rng: torch.Generator):
    scenes = _cycled_scenes(n)
    radius = (lo_px / IMAGE_SIZE, hi_px / IMAGE_SIZE)  # diameter px / 32 = radius in half-image units
    return scenes, render(scenes, rng, radius=radius, overhang=overhang)


def _rates(readings, scenes) -> dict:
    n = len(scenes)
    return {
        "shape": sum(r["shape"] == s.shape for r, s in zip(readings, scenes)) / n,
        "colour": sum(r["colour"] == s.colour for r, s in zip(readings, scenes)) / n,
        "background": sum(r["background"] == s.background for r, s in zip(readings, scenes)) / n,
        "abstained": sum(map(abstained, readings)) / n,
    }


def check_judge(name: str, per_bucket: int = 256, seed: int = 0) -> dict:
    judge = get_judge(name)
    rng = torch.Generator().manual_seed(CHECK_SEED + seed)
    out = {"judge": name, "per_bucket": per_bucket, "buckets": {}}
    clean, graded = [], []  # clean renders' buckets, and those the shape bar applies to
    for overhang in (0.0, 0.3):
        for lo, hi in BUCKETS_PX:
            scenes, images = _bucket_renders(lo, hi, per_bucket, overhang, rng)
            key = f"{lo}-{hi:g} px{' overhang 0.3' if overhang else ''}"
            out["buckets"][key] = _rates(judge.read(images), scenes)
            if not overhang:
                clean.append(out["buckets"][key])
                if lo >= BAR_FROM_PX:
                    graded.append(key)
    n = per_bucket * 2
    scenes = _cycled_scenes(n)
    empty = judge.read(render(scenes, rng, foreground="none"))
    blobs = judge.read(render(scenes, rng, radius=(0.3, JUDGE_RADIUS[1]), foreground="blob"))
    out["abstain_empty"] = sum(r["colour"] == NONE for r in empty) / n
    out["abstain_blob"] = sum(r["shape"] == NONE for r in blobs) / n
    out["abstain_clean"] = sum(v["abstained"] for v in clean) / len(clean)
    out["bars"] = {"shape_per_bucket": SHAPE_BAR, "abstain_clean": ABSTAIN_BAR, "from_px": BAR_FROM_PX}
    out["missed"] = [k for k in graded if out["buckets"][k]["shape"] < SHAPE_BAR] + (["abstain_clean"] if out["abstain_clean"] > ABSTAIN_BAR else [])
    return out
