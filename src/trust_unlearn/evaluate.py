"""The evaluation core: forget rate, retain accuracy and FD-judge for a concept, judged by the judge.

Target prompts state the concept in varied captions; retain prompts are every other scene of the
world (for combined/conditional concepts these include the look-alikes, e.g. red squares and blue
circles for "red circle"). Every prompt is generated with fixed seeds, so two models are compared
image for image; the reference model's retain images are cached on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trust_unlearn.judges import get_judge
from trust_unlearn.metrics import FEATURE_BACKENDS, frechet_distance
from trust_unlearn.pipeline import LoadedModel, generate, load_model
from trust_unlearn.world.concepts import Concept, prompt_set, retain_scenes, target_scenes


@dataclass
class EvalConfig:
    target_prompts: int = 12  # captions of the concept (cycled over its scenes and templates)
    target_seeds: int = 8  # images per target caption
    retain_seeds: int = 8  # images per retain scene (paired seeds: before and after see the same noise)
    seed: int = 0
    num_inference_steps: int | None = None  # model default (25 on the testbed)
    guidance_scale: float | None = None
    feature_backend: str = "judge"
    judge: str = "shapes"


@dataclass
class PromptSet:
    prompts: list[str]
    scenes: list
    seeds: list[int]


def build_prompt_sets(concept: Concept, cfg: EvalConfig) -> tuple[PromptSet, PromptSet]:
    targets = target_scenes(concept)
    per_scene = max(1, -(-cfg.target_prompts // len(targets)))
    t = prompt_set(targets, per_scene)[: max(cfg.target_prompts, len(targets))]
    r = prompt_set(retain_scenes(concept), 1)

    def expand(pairs, n, base):
        prompts = [p for p, _ in pairs for _ in range(n)]
        scenes = [s for _, s in pairs for _ in range(n)]
        return PromptSet(prompts, scenes, [base + k for k in range(len(prompts))])

    return expand(t, cfg.target_seeds, cfg.seed * 100_000), expand(r, cfg.retain_seeds, cfg.seed * 100_000 + 50_000)


def _cache_dir() -> Path:
    return Path(os.environ.get("TRUST_CACHE", Path.home() / ".cache" / "trust-unlearn"))


def _model_fingerprint(model: LoadedModel) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.pipe.unet.state_dict().items())[:: max(1, len(model.pipe.unet.state_dict()) // 16)]:
        h.update(name.encode())
        h.update(tensor.float().flatten()[:256].numpy().tobytes())
    return h.hexdigest()[:16]


def reference_images(reference: LoadedModel, prompts: PromptSet, steps: int, guidance: float) -> torch.Tensor:
    """The reference model's images for a prompt set, cached by model fingerprint and prompts."""
    key = hashlib.sha256(json.dumps([_model_fingerprint(reference), prompts.prompts, prompts.seeds, steps, guidance]).encode()).hexdigest()[:20]
    path = _cache_dir() / "reference" / f"{key}.safetensors"
    if path.exists():
        return load_file(path)["images"]
    images = generate(reference, prompts.prompts, prompts.seeds, guidance_scale=guidance, num_inference_steps=steps, desc="reference")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"images": images.contiguous()}, tmp)
    os.replace(tmp, path)
    return images


def _accuracy(readings, scenes, concept: Concept | None = None) -> dict:
    full = [all(r[a] == getattr(s, a) for a in r) for r, s in zip(readings, scenes)]
    out = {"all": sum(full) / max(1, len(full))}
    for attr in ("shape", "colour", "background"):
        out[attr] = sum(r[attr] == getattr(s, attr) for r, s in zip(readings, scenes)) / max(1, len(scenes))
    if concept is not None and concept.kind != "individual":
        look = [ok for ok, s in zip(full, scenes) if concept.shares_part(s)]
        out["lookalike"] = sum(look) / max(1, len(look))
    return out


def evaluate(model: LoadedModel, concept: Concept, cfg: EvalConfig | None = None,
             reference: LoadedModel | None = None, keep_images: bool = False) -> dict:
    """Judge-measured forget rate, retain accuracy (all attributes right) and FD-judge vs the reference."""
    cfg = cfg or EvalConfig()
    steps = cfg.num_inference_steps or model.num_inference_steps
    guidance = model.guidance_scale if cfg.guidance_scale is None else cfg.guidance_scale
    judge = get_judge(cfg.judge)
    target, retain = build_prompt_sets(concept, cfg)
    t_images = generate(model, target.prompts, target.seeds, guidance_scale=guidance, num_inference_steps=steps, desc="target")
    r_images = generate(model, retain.prompts, retain.seeds, guidance_scale=guidance, num_inference_steps=steps, desc="retain")
    t_read, r_read = judge.read(t_images), judge.read(r_images)
    forget = sum(concept.matches(r) for r in t_read) / len(t_read)
    retain_acc = _accuracy(r_read, retain.scenes, concept)
    reference = reference or load_model("testbed")
    ref_images = reference_images(reference, retain, steps, guidance)
    features = FEATURE_BACKENDS[cfg.feature_backend]
    fd = frechet_distance(features(judge, r_images), features(judge, ref_images))
    result = {
        "concept": concept.text, "kind": concept.kind, "model": model.source,
        "forget_rate": forget, "retain_accuracy": retain_acc["all"], "retain_by_attribute": retain_acc,
        f"fd_{cfg.feature_backend}": fd, "n_target_images": len(t_images), "n_retain_images": len(r_images),
        "num_inference_steps": steps, "guidance_scale": guidance, "config": asdict(cfg),
    }
    if "lookalike" in retain_acc:
        result["lookalike_retain_accuracy"] = retain_acc["lookalike"]
    if keep_images:
        result["_images"] = {"target": (t_images, target), "retain": (r_images, retain)}
    return result


def result_rows(result: dict) -> list[tuple[str, str]]:
    """Rows for a printed table."""
    rows = [("concept", f"{result['concept']} ({result['kind']})"), ("forget rate", f"{result['forget_rate']:.1%}"),
            ("retain accuracy", f"{result['retain_accuracy']:.1%}")]
    if "lookalike_retain_accuracy" in result:
        rows.append(("  look-alike retain accuracy", f"{result['lookalike_retain_accuracy']:.1%}"))
    by = result["retain_by_attribute"]
    rows.append(("  retain shape/colour/background", f"{by['shape']:.1%} / {by['colour']:.1%} / {by['background']:.1%}"))
    key = next(k for k in result if k.startswith("fd_"))
    rows.append((key.replace("fd_", "FD-"), f"{result[key]:.3f}"))
    rows.append(("images (target / retain)", f"{result['n_target_images']} / {result['n_retain_images']}"))
    return rows
