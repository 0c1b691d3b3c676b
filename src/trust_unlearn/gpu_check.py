"""GPU readiness check: seconds/step and peak GPU memory of TRUST (CIP, CSR), SalUn and ESD-x on an
SD-1.5-sized model with random weights, at 512x512 (latent 64x64). No network, no checkpoint.

    scripts/gpu_check.sh                # one CUDA GPU: the full check, a table, <= ~8 minutes
    scripts/gpu_check.sh --dry-run      # CPU: the same code on tiny shapes, < 1 minute (CI)

The model is built in code with SD 1.5's configuration (UNet2DConditionModel 320/640/1280/1280,
cross-attention 768, sample size 64; a 12-layer 768-wide CLIPTextModel; the 128/256/512/512 VAE) and
random weights, wrapped as a `StableDiffusionPipeline` in a `LoadedModel`, and every method runs
through the real engine pieces (`RunContext`, `get_method`, the method's own `step`), under the same
autocast the engine uses. The alignment scorer is a small random `CLIPModel` (a real ViT-L/14 scorer
costs more in the saliency pass). Timings are of random weights: the cost of a step, not its result.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# method label -> (registered method, method options)
METHODS: dict[str, tuple[str, dict]] = {
    "trust-cip": ("trust", {"reg": "cip"}),
    "trust-csr": ("trust", {"reg": "csr"}),
    "salun": ("salun", {}),
    "esd-x": ("esd-x", {}),
}


@dataclass
class Shapes:
    """Model and run sizes: `sd15` (the real check) or `tiny` (the CPU dry run)."""

    name: str
    resolution: int
    unet: dict
    text: dict
    vae: dict
    clip_image: int
    tokens: int
    trust: dict = field(default_factory=dict)
    salun: dict = field(default_factory=dict)
    esd: dict = field(default_factory=dict)


SD15 = Shapes(
    name="sd15", resolution=512, tokens=77, clip_image=224,
    unet=dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
              block_out_channels=(320, 640, 1280, 1280),
              down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
    text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
             sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    # the methods' defaults where they are SD-scale already; saliency as in TrustConfig's defaults
    trust=dict(saliency_steps=10, backprop_depth=2, saliency_batch=2, csr_batch=2, xi=2.0),
    salun=dict(mask_batches=2),
    esd=dict(ddim_steps=10),
)

TINY = Shapes(
    name="tiny", resolution=32, tokens=8, clip_image=16,
    unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8),
    text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=8, hidden_act="quick_gelu", projection_dim=32),
    vae=dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
             sample_size=32, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    trust=dict(saliency_steps=2, backprop_depth=1, saliency_batch=1, csr_batch=1, xi=1.0),
    salun=dict(mask_batches=1),
    esd=dict(ddim_steps=2),
)


def _tokenizer(max_length: int):
    """CLIP's real BPE tokenizer (from open_clip's vocabulary file) or, without open_clip, a byte-level
    CLIPTokenizer with the same special tokens (token count and shapes are what timing needs)."""
    from trust_unlearn.errors import UserError

    try:
        from trust_unlearn.clip_vocab import clip_tokenizer

        return clip_tokenizer(model_max_length=max_length)
    except UserError:
        from transformers import CLIPTokenizer

        from trust_unlearn.clip_vocab import _bytes_to_unicode

        chars = list(_bytes_to_unicode().values())
        vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_pipeline(shapes: Shapes, device: torch.device, seed: int = 0):
    """A StableDiffusionPipeline of the given shapes with random weights, built directly on `device`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer(shapes.tokens)
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                                                    pad_token_id=49407, **shapes.text))
        unet = UNet2DConditionModel(**shapes.unet)
        vae = AutoencoderKL(in_channels=3, out_channels=3, **shapes.vae)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_scorer_folder(shapes: Shapes, folder: Path) -> Path:
    """A small random CLIPModel (+ tokenizer) saved where `CLIPScorer` loads it from."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = _tokenizer(16)
    width = 32 if shapes.name == "tiny" else 256
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2 if shapes.name == "tiny" else 4,
                           num_attention_heads=4, image_size=shapes.clip_image, patch_size=4 if shapes.name == "tiny" else 16),
        projection_dim=min(width, 128),
    )
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gib(n_bytes: int) -> float:
    return n_bytes / 2**30


def time_method(label: str, model, spec, scorer, shapes: Shapes, *, steps: int, batch: int, mixed_precision: str,
                gradient_checkpointing: bool, attention_slicing: bool, lr: float) -> dict:
    """Build the method on the real engine pieces and time `steps` steps (step 0 includes mask building)."""
    from trust_unlearn.methods import get_method
    from trust_unlearn.methods.base import CommonConfig, RunContext

    name, options = METHODS[label]
    device = model.pipe.unet.device
    extra = shapes.trust if name == "trust" else shapes.salun if name == "salun" else shapes.esd
    common = CommonConfig(steps=steps, lr=lr, batch=batch, seed=0, cache_images=batch, cache_steps=2,
                          mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                          attention_slicing=attention_slicing).validate()
    method_cls = get_method(name)
    method_cfg = method_cls.config_cls(**{**extra, **options})
    row = {"method": label, "registered": name, "options": {**extra, **options}, "batch": batch, "steps": steps}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        row["resident_gib"] = _gib(torch.cuda.memory_allocated(device))
    t0 = time.perf_counter()
    ctx = RunContext(model, spec, common)
    ctx.scorer = scorer
    method = method_cls(ctx, method_cfg)
    trainable = method.trainable()
    ctx.freeze_original(trainable)
    ctx.cache_original_images()  # as the engine does: outside autocast
    _sync(device)
    row["setup_s"] = time.perf_counter() - t0
    times, logs, phases = [], [], []
    ctx.timer.lap()  # the caching above is not a step
    try:
        for k in range(steps):
            _sync(device)
            t = time.perf_counter()
            with common.autocast(ctx.device):
                logs.append(method.step(k))
            _sync(device)
            times.append(time.perf_counter() - t)
            phases.append(ctx.timer.lap())
    finally:
        with torch.no_grad():  # the next method starts from the same random weights
            for n, p in trainable.items():
                p.copy_(ctx.original[n])
                p.grad = None
        model.pipe.unet.requires_grad_(False)
    row["step0_s"] = times[0]
    # the per-step profile (docs/performance.md), over the steps after the first (which builds the mask)
    later = phases[1:] or phases
    row["phase_s"] = {p: sum(x.get(p, 0.0) for x in later) / len(later) for p in dict.fromkeys(q for x in later for q in x)}
    row["s_per_step"] = sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]
    row["loss_finite"] = all(math.isfinite(x.get("loss", 0.0)) for x in logs)
    row["trainable_params"] = sum(p.numel() for p in trainable.values())
    if getattr(method, "mask", None) is not None:
        row["mask_neurons"] = int(sum(int(m.sum()) for m in method.mask.values()))
    if device.type == "cuda":
        row["peak_gib"] = _gib(torch.cuda.max_memory_allocated(device))
    del method, ctx
    return row


def run_check(dry_run: bool = False, methods: list[str] | None = None, steps: int | None = None, batch: int | None = None,
              mixed_precision: str | None = None, gradient_checkpointing: bool = False, attention_slicing: bool = False,
              budget_s: float = 420.0, lr: float = 1e-5, on_row=None) -> dict:
    from trust_unlearn.concept_spec import ConceptSpec
    from trust_unlearn.errors import UserError
    from trust_unlearn.pipeline import LoadedModel, _quiet_libraries
    from trust_unlearn.evaluation.scorers import CLIPScorer

    _quiet_libraries()
    start = time.perf_counter()
    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if dry_run:
        device, shapes = torch.device("cpu"), TINY
    else:
        if not torch.cuda.is_available():
            raise UserError("no CUDA GPU visible; run with --dry-run for the CPU check of the same code")
        device, shapes = torch.device("cuda"), SD15
    steps = steps or (2 if dry_run else 4)
    batch = batch or (1 if dry_run else 2)
    if mixed_precision is None:
        mixed_precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    pipe = build_pipeline(shapes, device)
    model = LoadedModel(pipe=pipe, source=f"random {shapes.name}-shaped pipeline (built in code)",
                        guidance_scale=7.5, num_inference_steps=2, resolution=shapes.resolution)
    spec = ConceptSpec(name="nudity", targets=["a photo of a nude person", "a nude figure, oil painting"],
                       anchors=["a photo of a person wearing clothes"], retains=["a photo of a mountain lake"]).validate()
    result = {
        "mode": "dry-run (cpu, tiny shapes)" if dry_run else "gpu (sd15 shapes)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "resolution": shapes.resolution, "latent": shapes.unet["sample_size"],
        "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
        "attention_slicing": attention_slicing,
        "params": {"unet": _params(pipe.unet), "text_encoder": _params(pipe.text_encoder), "vae": _params(pipe.vae)},
        "build_s": time.perf_counter() - start, "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        scorer = CLIPScorer(str(build_scorer_folder(shapes, Path(tmp) / "clip"))).to(device)
        result["params"]["scorer"] = _params(scorer.model)
        for label in methods:
            if time.perf_counter() - start > budget_s:
                result["rows"].append({"method": label, "error": f"skipped: over the {budget_s:.0f} s budget"})
                continue
            try:
                result["rows"].append(time_method(
                    label, model, spec, scorer, shapes, steps=steps, batch=batch, mixed_precision=mixed_precision,
                    gradient_checkpointing=gradient_checkpointing, attention_slicing=attention_slicing, lr=lr))
            except torch.OutOfMemoryError as err:
                torch.cuda.empty_cache()
                result["rows"].append({"method": label, "error": f"out of memory: {str(err).splitlines()[0][:120]}"})
            except Exception as err:  # noqa: BLE001 - a failed method must not hide the others' numbers
                result["rows"].append({"method": label, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"})
            if on_row is not None:
                on_row(result["rows"][-1])
    result["total_s"] = time.perf_counter() - start
    return result


def format_table(result: dict) -> str:
    p = result["params"]
    lines = [
        f"gpu_check: {result['mode']} on {result['device']}, torch {result['torch']}, "
        f"{result['resolution']}x{result['resolution']} (latent {result['latent']}x{result['latent']}), "
        f"mixed precision {result['mixed_precision']}",
        f"params: unet {p['unet'] / 1e6:.1f}M, text encoder {p['text_encoder'] / 1e6:.1f}M, vae {p['vae'] / 1e6:.1f}M, "
        f"scorer {p.get('scorer', 0) / 1e6:.1f}M; built in {result['build_s']:.1f}s",
        "",
        f"{'method':<10} {'batch':>5} {'steps':>5} {'setup s':>8} {'step0 s':>8} {'s/step':>8} {'peak GiB':>9} "
        f"{'trainable':>11} {'mask':>6}  note",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['method']:<10} {'':>5} {'':>5} {'':>8} {'':>8} {'':>8} {'':>9} {'':>11} {'':>6}  {r['error']}")
            continue
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        note = "" if r["loss_finite"] else "non-finite loss"
        lines.append(f"{r['method']:<10} {r['batch']:>5} {r['steps']:>5} {r['setup_s']:>8.2f} {r['step0_s']:>8.3f} "
                     f"{r['s_per_step']:>8.3f} {peak:>9} {r['trainable_params'] / 1e6:>10.2f}M "
                     f"{r.get('mask_neurons', '-')!s:>6}  {note}")
    profiled = [r for r in result["rows"] if r.get("phase_s")]
    if profiled:
        lines += ["", "per-step profile, s (docs/performance.md):"]
        lines += [f"  {r['method']:<10} " + ", ".join(f"{k} {v:.3f}" for k, v in r["phase_s"].items()) for r in profiled]
    lines.append("")
    lines.append(f"total {result['total_s']:.1f}s. step0 includes mask building (SalUn's static mask; TRUST re-estimates "
                 "its mask every step); s/step is the mean of the later steps; peak = torch.cuda.max_memory_allocated "
                 "per method (pipeline weights included).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from trust_unlearn.errors import UserError

    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, same code path (< 1 minute)")
    ap.add_argument("--methods", nargs="+", default=None, help=f"subset of {' '.join(METHODS)}")
    ap.add_argument("--steps", type=int, default=None, help="steps per method (default 4 on GPU, 2 dry-run)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 2 on GPU, 1 dry-run)")
    ap.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                    help="autocast of the steps (default bf16 on a GPU that has it, else no)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--attention-slicing", action="store_true")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining methods after this many seconds")
    ap.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = ap.parse_args(argv)
    if args.steps is not None and args.steps < 1 or args.batch is not None and args.batch < 1:
        print("error: --steps and --batch must be at least 1", file=sys.stderr)
        return 2
    try:
        result = run_check(dry_run=args.dry_run, methods=args.methods, steps=args.steps, batch=args.batch,
                           mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                           attention_slicing=args.attention_slicing, budget_s=args.budget_s,
                           on_row=lambda r: print(f"[gpu_check] {json.dumps(r)}", flush=True))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
