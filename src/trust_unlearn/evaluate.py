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
    # images per retain scene (paired seeds: before and after see the same noise). 24, not 8: the 16 look-alike
    # scenes of "circle on striped background" at 8 seeds are 128 images, a binomial s.e. of ~2.7 points against
    # a 3-point bar; the original testbed reads 93.8 % at eval seed 0 x 8 and 89.8 % at seed 1 x 24.
    retain_seeds: int = 24
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


def model_fingerprint(model: LoadedModel) -> str:
    """A digest of every UNet weight: any change (one row of one projection) gives a new key."""
    h = hashlib.sha256()
    for name, tensor in model.pipe.unet.state_dict().items():
        h.update(name.encode())
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
    fingerprint = model_fingerprint(model)
    t_images = cached_generate(model, target, steps, guidance, "target", fingerprint)
    r_images = cached_generate(model, retain, steps, guidance, "retain", fingerprint)
    t_read, r_read = judge.read(t_images), judge.read(r_images)
    forget = sum(concept.matches(r) for r in t_read) / len(t_read)
    retain_acc = _accuracy(r_read, retain.scenes, concept)
    reference = reference or load_model("testbed")
    ref_images = r_images if reference is model else cached_generate(reference, retain, steps, guidance, "reference")
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
