"""Load any Stable-Diffusion-shaped diffusers pipeline (the testbed included) and generate from it.

One code path for the embedded testbed and a real SD checkpoint: both are a
`diffusers.StableDiffusionPipeline`; only the defaults (resolution, steps, guidance) differ.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trust_unlearn.errors import UserError
from trust_unlearn.testbed import SHIPPED_WEIGHTS, TESTBED_MARKER, load_text_components
from trust_unlearn.utils import progress

TESTBED = "testbed"
SD_DEFAULTS = {"guidance_scale": 7.5, "num_inference_steps": 50}


@dataclass
class LoadedModel:
    """A pipeline plus the sampling defaults it is meant to be used with."""

    pipe: object
    source: str
    guidance_scale: float
    num_inference_steps: int
    resolution: int
    is_testbed: bool = False
    extra: dict = field(default_factory=dict)


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _testbed_pipeline(weights: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    meta = json.loads((weights / TESTBED_MARKER).read_text())
    tokenizer, text_encoder = load_text_components(meta["tokenizer_max_length"])
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(weights / "vae"),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(weights / "unet"),
        scheduler=DDIMScheduler.from_pretrained(weights / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe, meta


def cross_attention_layers(unet) -> dict[str, torch.nn.Module]:
    """The UNet's text cross-attention modules (`attn2`), where concept neurons live."""
    return {name: m for name, m in unet.named_modules() if name.endswith("attn2") and getattr(m, "is_cross_attention", False)}


def load_model(model: str | None = None, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """`testbed` (default), a testbed weights folder, a pipeline folder, or a hub id already cached."""
    _quiet_libraries()
    model = model or TESTBED
    if model == TESTBED:
        path = SHIPPED_WEIGHTS
        if not (path / TESTBED_MARKER).exists():
            raise UserError(f"the shipped testbed weights are missing from {path}; reinstall, or run `trust testbed train`")
    else:
        path = Path(model).expanduser()
    if path.is_dir() and (path / TESTBED_MARKER).exists() and not (path / "model_index.json").exists():
        pipe, meta = _testbed_pipeline(path)
    elif path.is_dir() and (path / "model_index.json").exists():
        pipe, meta = _pretrained(str(path)), _read_marker(path)
    elif path.exists():
        raise UserError(f"{path} is not a diffusers pipeline folder (no model_index.json); pass a folder written by "
                        "`save_pretrained`, `trust testbed export` or `trust unlearn --out`")
    elif _looks_like_hub_id(model):
        pipe, meta = _pretrained(model, local_files_only=True), {}
    else:
        raise UserError(f"model path {model} does not exist; pass an existing pipeline folder, a cached hub id, or `testbed`")
    pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # results are judged by our judges, not filtered
    if not cross_attention_layers(pipe.unet):
        raise UserError(f"{model}: the UNet has no text cross-attention (attn2) layers; TRUST needs a "
                        "text-conditioned UNet2DConditionModel like Stable Diffusion's")
    resolution = meta.get("resolution") or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return LoadedModel(
        pipe=pipe, source=str(model), is_testbed=bool(meta),
        guidance_scale=meta.get("guidance_scale", SD_DEFAULTS["guidance_scale"]),
        num_inference_steps=meta.get("num_inference_steps", SD_DEFAULTS["num_inference_steps"]),
        resolution=int(resolution), extra=meta,
    )


def _looks_like_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~"))


def _read_marker(path: Path) -> dict:
    marker = path / TESTBED_MARKER
    return json.loads(marker.read_text()) if marker.exists() else {}


def _pretrained(source: str, **kwargs):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        where = ("is neither an existing folder nor a hub id in the local Hugging Face cache (this tool never "
                 "downloads)") if kwargs.get("local_files_only") else "could not be loaded"
        raise UserError(f"model {source} {where}: {str(err).splitlines()[0]}") from None


def initial_latents(model: LoadedModel, seeds: list[int]) -> torch.Tensor:
    """One latent per seed, independent of batching, so a (prompt, seed) pair always gives one image."""
    pipe = model.pipe
    size = model.resolution // pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, size, size)
    latents = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(latents).to(pipe.device, pipe.unet.dtype) * pipe.scheduler.init_noise_sigma


@torch.no_grad()
def generate(model: LoadedModel, prompts: list[str], seeds: list[int], *, guidance_scale: float | None = None,
             num_inference_steps: int | None = None, batch_size: int = 64, desc: str = "generate",
             show_progress: bool = True) -> torch.Tensor:
    """Images in [0, 1], (N, 3, H, W), for each (prompt, seed) pair, with a progress bar over batches."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must pair up")
    if any(not p.strip() for p in prompts):
        raise UserError("empty prompt: give every prompt some text")
    out = []
    starts = range(0, len(prompts), batch_size)
    for i in progress(starts, desc=desc, unit="batch", disable=not show_progress):
        result = model.pipe(
            prompt=prompts[i : i + batch_size],
            latents=initial_latents(model, seeds[i : i + batch_size]),
            guidance_scale=model.guidance_scale if guidance_scale is None else guidance_scale,
            num_inference_steps=num_inference_steps or model.num_inference_steps,
            height=model.resolution, width=model.resolution, output_type="pt",
        )
        out.append(result.images.float().cpu().contiguous())
    return torch.cat(out)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 8, labels: list[str] | None = None, scale: int = 3,
              captions: list[str] | None = None, headers: dict[int, str] | None = None) -> Path:
    """A PNG grid of images (N, 3, H, W) in [0, 1]; optional row labels on the left, a caption under every
    image (a line starting with "!" is drawn in red: an abstention) and column headers {column: text}."""
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    nrow = (n + ncol - 1) // ncol
    label_w = 0 if not labels else 8 + 6 * max(len(s) for s in labels)
    cap_h = 0 if not captions else 12 * max(c.count("\n") + 1 for c in captions) + 2
    head_h = 14 if headers else 0
    cell_h = h * scale + cap_h
    sheet = Image.new("RGB", (label_w + ncol * w * scale, head_h + nrow * cell_h), "white")
    arr = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    draw = ImageDraw.Draw(sheet)
    for k in range(n):
        x, y = label_w + (k % ncol) * w * scale, head_h + (k // ncol) * cell_h
        sheet.paste(Image.fromarray(arr[k]).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        if captions:
            for i, line in enumerate(captions[k].split("\n")):
                draw.text((x + 2, y + h * scale + 1 + 12 * i), line.lstrip("!"), fill="red" if line.startswith("!") else "black")
    for col, text in (headers or {}).items():
        draw.text((label_w + col * w * scale + 2, 1), text, fill="black")
    for r, text in enumerate((labels or [])[:nrow]):
        draw.text((4, head_h + r * cell_h + h * scale // 2 - 5), text, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    sheet.save(tmp)
    os.replace(tmp, path)
    return path


def export_pipeline(model: LoadedModel, out: str | Path) -> Path:
    """A complete pipeline folder (text encoder and tokenizer included), written atomically.

    The sampling defaults travel in testbed.json; plain diffusers ignores that file.
    """
    from trust_unlearn.utils import atomic_dir

    out = Path(out)
    with atomic_dir(out) as tmp:
        save_pipeline(model, tmp)
    return out


def save_pipeline(model: LoadedModel, folder: Path) -> None:
    from trust_unlearn.utils import write_json

    model.pipe.save_pretrained(folder, safe_serialization=True)
    if model.extra:
        write_json(folder / TESTBED_MARKER, model.extra)
