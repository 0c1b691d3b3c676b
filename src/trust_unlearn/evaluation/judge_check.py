"""`trust testbed judges`: how well each judge reads the world's own renders, by size, and when it abstains.

Fresh seeded renders (seeds of their own, never a training or evaluation image) over every size a
generator may produce, fully inside the frame and up to 30 % outside it; accuracy per size bucket
(diameter in pixels). Bars: >= 98 % shape accuracy on clean renders in every bucket from 6 px up, and
<= 1 % of clean renders abstained on. Abstention is also measured on what should be abstained on:
empty backgrounds (shape and colour "none") and amorphous blobs (shape "none").

The alignment scorer (TRUST's signal, never a judge) is held to the same shape bar, read zero-shot as CLIP
would be: the full caption it aligns best with, among every scene of the world. TRUST reads its own
generations with it (saliency, stopping probes), and those shrink while a concept is unlearned.
"""
from __future__ import annotations

import torch

from trust_unlearn.evaluation.judges import abstained, get_judge
from trust_unlearn.testbed.networks import NONE
from trust_unlearn.world.captions import train_caption
from trust_unlearn.world.shapes import IMAGE_SIZE, JUDGE_RADIUS, all_scenes, render

SCORER_TEMPLATE = "a {c} {s} on a {b} background"  # one caption per scene of the world

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


class ScorerReader:
    """The testbed's alignment scorer read as a zero-shot classifier: each image gets the scene of its best-aligned
    caption."""

    def __init__(self):
        from trust_unlearn.evaluation.scorers import TestbedScorer

        self.scorer = TestbedScorer()
        self.scenes = all_scenes()
        self.captions = [train_caption(s, SCORER_TEMPLATE) for s in self.scenes]
        self.scorer.prepare_texts(self.captions)

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[dict[str, str]]:
        scores = self.scorer.image_features(images) @ self.scorer.text_features(self.captions).T  # every image once
        best = [self.scenes[i] for i in scores.argmax(1).tolist()]
        return [{"shape": s.shape, "colour": s.colour, "background": s.background} for s in best]


def _read_buckets(reader, per_bucket: int, overhang: float, rng: torch.Generator) -> dict:
    """The reader's rates per size bucket, keyed "lo-hi px" (with the overhang named when there is one)."""
    out = {}
    for lo, hi in BUCKETS_PX:
        scenes, images = _bucket_renders(lo, hi, per_bucket, overhang, rng)
        out[f"{lo}-{hi:g} px{' overhang 0.3' if overhang else ''}"] = _rates(reader.read(images), scenes)
    return out


def _missed_shape_bar(clean: dict) -> list[str]:
    """The clean buckets from BAR_FROM_PX up whose shape accuracy is under the bar."""
    return [k for (lo, _), k in zip(BUCKETS_PX, clean) if lo >= BAR_FROM_PX and clean[k]["shape"] < SHAPE_BAR]


def check_scorer(per_bucket: int = 256, seed: int = 0) -> dict:
    """The scorer's readings per size bucket, under the judges' shape bar (it cannot abstain: no abstention bars)."""
    rng = torch.Generator().manual_seed(CHECK_SEED + seed)
    clean = _read_buckets(ScorerReader(), per_bucket, 0.0, rng)
    return {"judge": "scorer", "per_bucket": per_bucket, "buckets": clean,
            "bars": {"shape_per_bucket": SHAPE_BAR, "from_px": BAR_FROM_PX}, "missed": _missed_shape_bar(clean)}


def check_judge(name: str, per_bucket: int = 256, seed: int = 0) -> dict:
    if name == "scorer":
        return check_scorer(per_bucket, seed)
    judge = get_judge(name)
    rng = torch.Generator().manual_seed(CHECK_SEED + seed)
    clean = _read_buckets(judge, per_bucket, 0.0, rng)
    out = {"judge": name, "per_bucket": per_bucket, "buckets": {**clean, **_read_buckets(judge, per_bucket, 0.3, rng)}}
    n = per_bucket * 2
    scenes = _cycled_scenes(n)
    empty = judge.read(render(scenes, rng, foreground="none"))
    blobs = judge.read(render(scenes, rng, radius=(0.3, JUDGE_RADIUS[1]), foreground="blob"))
    out["abstain_empty"] = sum(r["colour"] == NONE for r in empty) / n
    out["abstain_blob"] = sum(r["shape"] == NONE for r in blobs) / n
    out["abstain_clean"] = sum(v["abstained"] for v in clean.values()) / len(clean)
    out["bars"] = {"shape_per_bucket": SHAPE_BAR, "abstain_clean": ABSTAIN_BAR, "from_px": BAR_FROM_PX}
    out["missed"] = _missed_shape_bar(clean) + (["abstain_clean"] if out["abstain_clean"] > ABSTAIN_BAR else [])
    return out
