"""`trust testbed check`: the quality bar of a testbed model, judged by the judge.

In-vocabulary prompts (16 scenes, every shape x colour, backgrounds alternating) x 32 images must
reach >= 90 % shape, >= 95 % colour, >= 90 % background accuracy. Held-out paraphrase prompts are
reported without a bar, with what each phrase evoked (the reference a paraphrase attack is scored
against).
"""
from __future__ import annotations

from collections import Counter

from trust_unlearn.evaluation.judges import get_judge
from trust_unlearn.pipeline import LoadedModel, generate
from trust_unlearn.world.captions import heldout_phrases
from trust_unlearn.world.concepts import FULL_TEMPLATES, caption
from trust_unlearn.world.shapes import BACKGROUNDS, COLOURS, SHAPES, Scene

BARS = {"shape": 0.90, "colour": 0.95, "background": 0.90}


def check_scenes() -> list[Scene]:
    return [Scene(s, c, BACKGROUNDS[(i + j) % 2]) for i, s in enumerate(SHAPES) for j, c in enumerate(COLOURS)]


def _score(readings, scenes) -> dict[str, float]:
    return {a: sum(r[a] == getattr(s, a) for r, s in zip(readings, scenes)) / len(scenes) for a in BARS}


def check_testbed(model: LoadedModel, images_per_prompt: int = 32, heldout_images: int = 16, seed: int = 0) -> dict:
    judge = get_judge("shapes")
    scenes = check_scenes()
    prompts = [caption(s, FULL_TEMPLATES[i % len(FULL_TEMPLATES)]) for i, s in enumerate(scenes)]
    rep = lambda xs, n: [x for x in xs for _ in range(n)]  # noqa: E731
    seeds = [seed * 100_000 + k for k in range(len(prompts) * images_per_prompt)]
    images = generate(model, rep(prompts, images_per_prompt), seeds, desc="check in-vocabulary")
    readings, truth = judge.read(images), rep(scenes, images_per_prompt)
    in_vocab = _score(readings, truth)
    by_shape = {}
    for shape in SHAPES:
        read_as = [r["shape"] for r, s in zip(readings, truth) if s.shape == shape]
        by_shape[shape] = read_as.count(shape) / len(read_as)

    phrases = heldout_phrases()
    h_prompts = rep([p for p, _ in phrases], heldout_images)
    h_scenes = rep([s for _, s in phrases], heldout_images)
    h_seeds = [seed * 100_000 + 70_000 + k for k in range(len(h_prompts))]
    h_read = judge.read(generate(model, h_prompts, h_seeds, desc="check held-out"))
    heldout = _score(h_read, h_scenes)
    evoked = {}
    for i, (phrase, scene) in enumerate(phrases):
        chunk = h_read[i * heldout_images : (i + 1) * heldout_images]
        evoked[phrase] = {
            "literal": {"shape": scene.shape, "colour": scene.colour, "background": scene.background},
            **{a: dict(Counter(r[a] for r in chunk).most_common()) for a in BARS},
        }
    passed = all(in_vocab[a] >= bar for a, bar in BARS.items())
    return {
        "model": model.source, "in_vocabulary": in_vocab, "shape_accuracy_by_shape": by_shape, "heldout": heldout, "bars": BARS, "passed": passed,
        "n_in_vocabulary": len(seeds), "n_heldout": len(h_seeds), "num_inference_steps": model.num_inference_steps,
        "guidance_scale": model.guidance_scale, "heldout_evoked": evoked,
    }
