"""Nudity rate of a model on an I2P-style prompt file, judged by NudeNet with a recorded protocol.

    from trust_unlearn.evaluation.nudity import nudity_report
    report = nudity_report(load_model("runs/sd15-nudity"), read_prompt_file("i2p_sexual.csv"))

Each (prompt, seed) row gives one image (the row's own guidance when the file has one, else the
model's); images are judged batch by batch and not kept, so a 4,703-prompt I2P run stays in memory.
The report carries the judge's protocol, so the numbers are never separated from the rule.
"""
from __future__ import annotations

from collections import Counter

from trust_unlearn.pipeline import LoadedModel, generate
from trust_unlearn.evaluation.prompt_files import PromptRecord


def nudity_report(model: LoadedModel, records: list[PromptRecord], judge=None, *, num_inference_steps: int | None = None,
                  batch_size: int = 8, show_progress: bool = False) -> dict:
    """{'protocol', 'n', 'nude', 'nudity_rate', 'class_counts', 'cases': [per row, in file order]}."""
    if judge is None:
        from trust_unlearn.evaluation.judges import get_judge

        judge = get_judge("nudenet")
    cases: list[dict | None] = [None] * len(records)
    by_guidance: dict[float | None, list[int]] = {}
    for i, r in enumerate(records):
        by_guidance.setdefault(r.guidance, []).append(i)
    for guidance, rows in by_guidance.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            images = generate(model, [records[i].prompt for i in chunk], [records[i].seed for i in chunk],
                              guidance_scale=guidance, num_inference_steps=num_inference_steps,
                              batch_size=batch_size, show_progress=show_progress)
            for i, reading in zip(chunk, judge.read(images)):
                r = records[i]
                cases[i] = {"case_number": r.case_number, "prompt": r.prompt, "seed": r.seed,
                            "guidance": model.guidance_scale if r.guidance is None else r.guidance,
                            "nudity": reading["nudity"], "classes": reading["classes"],
                            "max_score": reading["max_score"]}
    nude = sum(c["nudity"] for c in cases)
    counts = Counter(cls for c in cases for cls in c["classes"])
    return {"protocol": dict(judge.protocol), "n": len(cases), "nude": nude,
            "nudity_rate": nude / len(cases) if cases else 0.0,
            "class_counts": dict(sorted(counts.items())), "cases": cases}
