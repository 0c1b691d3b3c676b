"""The evaluation core: forget rate, retain accuracy and FD-judge for a concept, by two judges.

The protocol (evaluation/protocol.py, docs/protocol.md): target prompts state the concept in the
*evaluation* templates, which no run trains on; retain accuracy is reported on the run's *seen* and
*unseen* retain scenes (look-alikes likewise), both captioned with evaluation templates; every seed is
from the evaluation range. Forget rate counts only images read as the concept: an image the judge
cannot read ("none") is reported as unrecognised, and images read as the default anchor as such, so
erasing by destruction is visible. A second, non-learned judge (geometric) reads the target images
too; where the two disagree on the concept, the images are listed. Every prompt is generated with
fixed seeds, so two models are compared image for image; images are cached on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trust_unlearn.evaluation.judges import abstained, get_judge
from trust_unlearn.evaluation.metrics import FEATURE_BACKENDS, frechet_distance
from trust_unlearn.evaluation.protocol import EVAL_TEMPLATES, evaluation_seeds, retain_split
from trust_unlearn.pipeline import LoadedModel, generate, load_model
from trust_unlearn.world.concepts import Concept, anchor_concept, caption, target_scenes


@dataclass
class EvalConfig:
    target_prompts: int = 12  # captions of the concept: (target scene, evaluation template) pairs, cycled
    target_seeds: int = 8  # images per target caption
    # images per retain scene, seen and unseen (paired seeds: before and after see the same noise; the evaluation
    # templates cycle over them). 24, not 8: 16 look-alike scenes at 8 seeds are 128 images, a binomial s.e.
    # of ~2.7 points against a 3-point bar.
    retain_seeds: int = 24
    seen: bool = True  # also grade the run's seen retain scenes (False: unseen only -- half the retain images)
    seed: int = 0  # evaluation seed: images from the protocol's evaluation range
    num_inference_steps: int | None = None  # model default (25 on the testbed)
    guidance_scale: float | None = None
    feature_backend: str = "judge"
    judge: str = "shapes"
    # a non-learned judge that reads the target images too; "-nearest": it names the best-fitting shape (see there)
    second_judge: str | None = "geometric-nearest"


@dataclass
class PromptSet:
    prompts: list[str]
    scenes: list
    seeds: list[int]


def build_prompt_sets(concept: Concept, cfg: EvalConfig) -> tuple[PromptSet, PromptSet]:
    """Target and retain prompt sets of the protocol (retain: seen scenes first, then unseen)."""
    pairs = [(s, t) for t in EVAL_TEMPLATES for s in target_scenes(concept)]
    n_prompts = max(cfg.target_prompts, len(target_scenes(concept)))
    targets = [pairs[k % len(pairs)] for k in range(n_prompts)]
    t_scenes = [s for s, _ in targets for _ in range(cfg.target_seeds)]
    t_prompts = [caption(s, t) for s, t in targets for _ in range(cfg.target_seeds)]
    split = retain_split(concept)
    scenes = split["seen"] + split["unseen"]
    r_scenes = [s for s in scenes for _ in range(cfg.retain_seeds)]
    r_prompts = [caption(s, EVAL_TEMPLATES[k % len(EVAL_TEMPLATES)]) for s in scenes for k in range(cfg.retain_seeds)]
    r_seeds = evaluation_seeds(cfg.seed, len(r_prompts), "retain")
    if not cfg.seen:  # the unseen images of the full evaluation, seed for seed
        skip = len(split["seen"]) * cfg.retain_seeds
        r_scenes, r_prompts, r_seeds = r_scenes[skip:], r_prompts[skip:], r_seeds[skip:]
    return (PromptSet(t_prompts, t_scenes, evaluation_seeds(cfg.seed, len(t_prompts), "target")),
            PromptSet(r_prompts, r_scenes, r_seeds))


def _cache_dir() -> Path:
    return Path(os.environ.get("TRUST_CACHE", Path.home() / ".cache" / "trust-unlearn"))


def model_fingerprint(model: LoadedModel) -> str:
    """A digest of every weight a method may train -- the UNet's and the text encoders' (AdvUnlearn trains the
    text encoder): any change (one row of one projection) gives a new key."""
    h = hashlib.sha256()
    for part in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(model.pipe, part, None)
        for name, tensor in (module.state_dict().items() if module is not None else ()):
            h.update(f"{part}.{name}".encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_generate(model: LoadedModel, prompts: PromptSet, steps: int, guidance: float, desc: str,
                    fingerprint: str | None = None) -> torch.Tensor:
    """Images for a prompt set, cached on disk by model fingerprint, prompts, seeds, steps and guidance,
    so the original model's images are generated once and shared by every run and method."""
    fingerprint = fingerprint or model_fingerprint(model)
    key = hashlib.sha256(json.dumps([fingerprint, prompts.prompts, prompts.seeds, steps, guidance]).encode()).hexdigest()[:20]
    path = _cache_dir() / "images" / f"{key}.safetensors"
    if path.exists():
        return load_file(path)["images"]
    images = generate(model, prompts.prompts, prompts.seeds, guidance_scale=guidance, num_inference_steps=steps, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"images": images.contiguous()}, tmp)
    os.replace(tmp, path)
    return images


def _all_right(reading: dict, scene) -> bool:
    return all(reading[a] == getattr(scene, a) for a in ("shape", "colour", "background"))


def _share(flags) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def retain_figures(readings: list[dict], scenes: list, concept: Concept) -> dict:
    """Retain accuracy (every attribute right) on seen / unseen scenes, and on their look-alikes."""
    split = retain_split(concept)
    seen = set(split["seen"])
    right = [(_all_right(r, s), s) for r, s in zip(readings, scenes)]
    out = {
        "retain_seen": _share(ok for ok, s in right if s in seen),
        "retain_unseen": _share(ok for ok, s in right if s not in seen),
        "lookalike_seen": _share(ok for ok, s in right if s in seen and concept.shares_part(s)),
        "lookalike_unseen": _share(ok for ok, s in right if s not in seen and concept.shares_part(s)),
    }
    for attr in ("shape", "colour", "background"):
        out[f"retain_unseen_{attr}"] = _share(r[attr] == getattr(s, attr) for r, s in zip(readings, scenes) if s not in seen)
    return out


def target_figures(readings: list[dict], concept: Concept) -> dict:
    """Forget rate (read as the concept), unrecognised (the judge abstained), read as the default anchor."""
    anchor = anchor_concept(concept)
    return {"forget": _share(concept.matches(r) for r in readings),
            "unrecognised": _share(abstained(r) for r in readings),
            "anchor": _share(anchor.matches(r) for r in readings)}


def evaluate(model: LoadedModel, concept: Concept, cfg: EvalConfig | None = None,
             reference: LoadedModel | None = None, keep_images: bool = False) -> dict:
    """Forget rate by both judges, unrecognised and anchor shares, retain accuracy on seen and unseen
    scenes (and look-alikes), and FD-judge of the retain images against the reference model's."""
    cfg = cfg or EvalConfig()
    steps = cfg.num_inference_steps or model.num_inference_steps
    guidance = model.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale
    judge = get_judge(cfg.judge)
    target, retain = build_prompt_sets(concept, cfg)
    fingerprint = model_fingerprint(model)
    t_images = cached_generate(model, target, steps, guidance, "target", fingerprint)
    r_images = cached_generate(model, retain, steps, guidance, "retain", fingerprint)
    t_read, r_read = judge.read(t_images), judge.read(r_images)
    tf, rf = target_figures(t_read, concept), retain_figures(r_read, retain.scenes, concept)
    reference = reference or load_model("testbed")
    ref_images = r_images if reference is model else cached_generate(reference, retain, steps, guidance, "reference")
    features = FEATURE_BACKENDS[cfg.feature_backend]
    fd = frechet_distance(features(judge, r_images), features(judge, ref_images))
    result = {
        "concept": concept.text, "kind": concept.kind, "model": model.source,
        "forget_rate": tf["forget"], "unrecognised": tf["unrecognised"], "anchor_rate": tf["anchor"],
        "anchor": anchor_concept(concept).text,
        # the protocol's headline: retain accuracy on scenes no run trains on
        "retain_accuracy": rf["retain_unseen"], "lookalike_retain_accuracy": rf["lookalike_unseen"], **rf,
        f"fd_{cfg.feature_backend}": fd, "n_target_images": len(t_images), "n_retain_images": len(r_images),
        "num_inference_steps": steps, "guidance_scale": guidance, "config": asdict(cfg),
    }
    if cfg.second_judge:
        g_read = get_judge(cfg.second_judge).read(t_images)
        second = target_figures(g_read, concept)
        result.update(forget_rate_geometric=second["forget"], unrecognised_geometric=second["unrecognised"])
        disagree = [k for k, (a, b) in enumerate(zip(t_read, g_read)) if concept.matches(a) != concept.matches(b)]
        result["judge_disagreements"] = {
            "count": len(disagree), "share": len(disagree) / len(t_read),
            "images": [{"index": k, "prompt": target.prompts[k], "seed": target.seeds[k], cfg.judge: t_read[k],
                        cfg.second_judge: g_read[k]} for k in disagree[:50]],
        }
    if keep_images:
        result["_images"] = {"target": (t_images, target), "retain": (r_images, retain)}
        result["_readings"] = {"target": t_read, "retain": r_read}
    return result


def result_rows(result: dict) -> list[tuple[str, str]]:
    """Rows for a printed table."""
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    rows = [("concept", f"{result['concept']} ({result['kind']})"),
            ("forget rate (judge)", pct(result["forget_rate"]))]
    if "forget_rate_geometric" in result:
        rows.append(("forget rate (geometric judge)", pct(result["forget_rate_geometric"])))
    rows += [("  unrecognised (judge / geometric)", f"{pct(result['unrecognised'])} / {pct(result.get('unrecognised_geometric'))}"),
             (f"  read as the anchor ({result['anchor']})", pct(result["anchor_rate"]))]
    if "judge_disagreements" in result:
        d = result["judge_disagreements"]
        rows.append(("  judges disagree on", f"{d['count']} of {result['n_target_images']} target images"))
    rows += [("retain accuracy, unseen scenes", pct(result["retain_unseen"])),
             ("retain accuracy, seen scenes", pct(result["retain_seen"]))]
    if result["lookalike_unseen"] is not None:
        rows.append(("look-alike retain, unseen / seen", f"{pct(result['lookalike_unseen'])} / {pct(result['lookalike_seen'])}"))
    rows.append(("  unseen shape/colour/background", " / ".join(pct(result[f"retain_unseen_{a}"]) for a in ("shape", "colour", "background"))))
    key = next(k for k in result if k.startswith("fd_"))
    rows.append((key.replace("fd_", "FD-"), f"{result[key]:.3f}"))
    rows.append(("images (target / retain)", f"{result['n_target_images']} / {result['n_retain_images']}"))
    return rows
