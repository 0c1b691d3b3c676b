"""What every unlearning method shares: the run context and the preservation loss.

A method is one file: a config dataclass, and a class with `trainable()`, `step(k)` and
`state_dict()/load_state_dict()`; it registers itself by name (see methods/__init__.py).
The context owns what the engine prepares once: text states, the original model's images of the
target and retain prompts (as latents), a frozen copy of the trainable weights, and the RNG.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch.func import functional_call

from trust_unlearn.concept_spec import ConceptSpec
from trust_unlearn.evaluation.protocol import run_rng_seed, training_seeds
from trust_unlearn.pipeline import LoadedModel, initial_latents
from trust_unlearn.utils import PhaseTimer


@dataclass
class CommonConfig:
    """Options every training method understands."""

    # defaults tuned on the testbed; for SD 1.x/2.x start from lr 1e-5 (as SalUn/ESD do) -- see docs/scale.md
    steps: int = 400  # TRUST on testbed v3: 200 misses the retain bar for "circle on striped background"
    lr: float = 2e-3
    batch: int = 8
    seed: int = 0
    guidance: float | None = None  # CFG for the original-model images and saliency (model default)
    cache_images: int = 64  # original-model images per prompt set (target, retain) for the losses
    cache_steps: int | None = None  # DDIM steps for those images (model default)
    # memory and speed knobs for big models (see docs/scale.md)
    mixed_precision: str = "no"  # no | bf16 | fp16: autocast for the training step
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, ~30 % slower
    attention_slicing: bool = False  # sliced (math) attention: less peak memory, double-backward safe
    # stop when forgotten (stopping.py): probe with the alignment scorer every k steps (0 = never) and end
    # the run once `stop_patience` probes in a row read the concept gone and retain intact; `steps` is then a maximum
    probe_every: int = 25
    stop: bool = True
    probes: int = 16  # probe images per side (target prompts, retain prompts)
    probe_steps: int = 25  # DDIM steps of a probe generation (the testbed's own; SD's 50 would double the cost)
    stop_forget: float = 0.05  # at most this share of target probes still read as the concept
    stop_retain_drift: float = 0.02  # and retain alignment at most this much (relative) below the original's ...
    stop_retain_drop: float = 0.0625  # ... or, with a world vocabulary, the share of retain probes read as their own
    # caption at most this much below the original's (stopping.py)
    stop_margin: float = 0.0  # a target probe reads forgotten only if the scorer prefers a contrast by more than this
    stop_patience: int = 2  # consecutive forgotten probes before the run stops (one lucky probe must not end it)

    def validate(self) -> "CommonConfig":
        from trust_unlearn.errors import UserError

        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UserError(f"mixed_precision must be no, bf16 or fp16, not {self.mixed_precision!r}")
        if self.steps < 1 or self.batch < 1 or self.cache_images < 1:
            raise UserError("steps, batch and cache_images must be at least 1")
        if self.probe_every < 0 or self.probes < 1 or self.probe_steps < 1 or self.stop_patience < 1:
            raise UserError("probe_every must be >= 0 (0: never probe), probes, probe_steps and stop_patience >= 1")
        if self.stop_margin < 0:
            raise UserError(f"stop_margin must be >= 0 (0: a contrast merely beats the concept), not {self.stop_margin}")
        if self.stop_retain_drift < 0 or self.stop_retain_drop < 0:
            raise UserError("stop_retain_drift and stop_retain_drop must be >= 0 (0: retain may not fall at all)")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, not {self.lr}")
        return self

    def autocast(self, device: torch.device):
        """The autocast context of a training step (a no-op for mixed_precision='no')."""
        import contextlib

        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def apply_memory_knobs(self, pipe) -> None:
        if self.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        if self.attention_slicing:
            pipe.enable_attention_slicing("max")


def gradients(loss: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """d loss / d param for each named parameter (zeros where the loss does not reach it)."""
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)}


class RunContext:
    """Shared state of one unlearning run (built once, before step 0)."""

    def __init__(self, model: LoadedModel, spec: ConceptSpec, common: CommonConfig):
        self.model, self.spec, self.common = model, spec, common
        self.pipe = model.pipe
        self.unet = model.pipe.unet
        self.device = self.unet.device
        self.guidance = model.guidance_scale if common.guidance is None else common.guidance
        # seeded from the protocol's training range: nothing a run draws is an evaluation seed
        self.rng = torch.Generator().manual_seed(run_rng_seed(common.seed))
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        self._states: dict[str, torch.Tensor] = {}
        # all of the spec's prompts at once, in a fixed order: a resumed run sees bit-identical states
        self.text(["", *spec.targets, *spec.anchors, *spec.retains])
        self.uncond = self.text([""])[0]
        self.target_latents, self.target_idx = None, None
        self.retain_latents, self.retain_idx = None, None
        self.original: dict[str, torch.Tensor] = {}
        self.rank, self.world = 0, 1  # data-parallel position (set by the engine under accelerate)
        self.timer = PhaseTimer()  # methods time their phases with it: the per-step profile

    # ------------------------------------------------------------------ data parallel
    def shard(self, x):
        """This rank's contiguous slice of a global batch. Every rank draws the same global batch from the
        same seeded RNG, so the ranks stay in step and together they see exactly the 1-process batch."""
        if self.world == 1:
            return x
        per = len(x) // self.world
        return x[self.rank * per : (self.rank + 1) * per]

    def average(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce (mean) in place across ranks; a no-op in one process."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def average_gradients(self, params) -> None:
        self.average([p.grad for p in params if p.grad is not None])

    # ------------------------------------------------------------------ text
    @property
    def is_sdxl(self) -> bool:
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @torch.no_grad()
    def text(self, prompts: list[str]) -> torch.Tensor:
        """Text states exactly as the pipeline computes them (cached per prompt), (B, L, D).

        SDXL also conditions on a pooled text embedding: it travels as one extra, zero-padded row at
        the end of the states, so every method handles one tensor and `eps` unpacks it.
        """
        missing = [p for p in dict.fromkeys(prompts) if p not in self._states]
        for i in range(0, len(missing), 64):
            chunk = missing[i : i + 64]
            out = self.pipe.encode_prompt(prompt=chunk, device=self.device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
            states = out[0]
            if self.is_sdxl:
                pooled = out[2]
                row = torch.zeros(len(chunk), 1, states.shape[-1], dtype=states.dtype, device=states.device)
                row[:, 0, : pooled.shape[-1]] = pooled
                states = torch.cat([states, row], dim=1)
            self._states.update(zip(chunk, states))
        return torch.stack([self._states[p] for p in prompts])

    def token_states(self, cond: torch.Tensor) -> torch.Tensor:
        """The per-token states that cross-attention reads (SDXL's packed pooled row removed)."""
        return cond[:, :-1] if self.is_sdxl else cond

    def _unet_kwargs(self, z_t, cond) -> dict:
        if not self.is_sdxl:
            return {"encoder_hidden_states": cond}
        pooled_dim = self.pipe.text_encoder_2.config.projection_dim
        size = z_t.shape[-1] * self.pipe.vae_scale_factor
        time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=cond.dtype, device=cond.device)
        return {"encoder_hidden_states": cond[:, :-1], "added_cond_kwargs": {
            "text_embeds": cond[:, -1, :pooled_dim], "time_ids": time_ids.expand(len(cond), -1)}}

    # ------------------------------------------------------------------ original model
    def freeze_original(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Keep the trainable weights' original values: eps_theta0 = functional_call with these."""
        self.original = {n: p.detach().clone() for n, p in params.items()}

    def eps(self, z_t, t, cond, original: bool = False) -> torch.Tensor:
        kwargs = self._unet_kwargs(z_t, cond)
        if original:
            with torch.no_grad():
                return functional_call(self.unet, self.original, (z_t, t), kwargs).sample
        return self.unet(z_t, t, **kwargs).sample

    @torch.no_grad()
    def sample_latents(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Final DDIM latents z_0 of the *current* UNet (called before any update: the original)."""
        out = []
        for i in range(0, len(prompts), 32):
            out.append(self.pipe(
                prompt=prompts[i : i + 32], latents=initial_latents(self.model, seeds[i : i + 32]),
                guidance_scale=self.guidance, num_inference_steps=self.common.cache_steps or self.model.num_inference_steps,
                height=self.model.resolution, width=self.model.resolution, output_type="latent",
            ).images)
        return torch.cat(out)

    def cache_original_images(self) -> None:
        n = self.common.cache_images
        seeds = training_seeds(self.common.seed, 2 * n)
        self.target_idx = torch.arange(n) % len(self.spec.targets)
        self.target_latents = self.sample_latents([self.spec.targets[i] for i in self.target_idx], seeds[:n])
        if self.spec.retains:
            self.retain_idx = torch.arange(n) % len(self.spec.retains)
            self.retain_latents = self.sample_latents([self.spec.retains[i] for i in self.retain_idx], seeds[n:])

    def cache_tensors(self) -> dict[str, torch.Tensor]:
        out = {"target_latents": self.target_latents, "target_idx": self.target_idx}
        if self.retain_latents is not None:
            out.update(retain_latents=self.retain_latents, retain_idx=self.retain_idx)
        return out

    def load_cache_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.target_latents, self.target_idx = tensors["target_latents"], tensors["target_idx"]
        self.retain_latents, self.retain_idx = tensors.get("retain_latents"), tensors.get("retain_idx")

    # ------------------------------------------------------------------ sampling helpers
    def _draw(self, latents: torch.Tensor, batch: int):
        rows = torch.randint(0, len(latents), (batch,), generator=self.rng)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch,), generator=self.rng)
        noise = torch.randn(latents[rows].shape, generator=self.rng)
        rows, t, noise = self.shard(rows), self.shard(t), self.shard(noise).to(latents)
        return rows, self.noise_scheduler.add_noise(latents[rows], noise, t), t.to(self.device), noise

    def noised(self, latents: torch.Tensor, batch: int):
        """A random batch z_t = noised latents, with the chosen rows, timesteps and noise (this rank's shard)."""
        rows, z_t, t, _ = self._draw(latents, batch)
        return rows, z_t, t

    def diffusion_loss(self, batch: int) -> torch.Tensor:
        """The plain diffusion loss of the current model on the original model's target images
        (SalUn's saliency signal; TRUST's noise-prediction saliency ablation)."""
        rows, z_t, t, noise = self._draw(self.target_latents, batch)
        cond = self.text([self.spec.targets[i] for i in self.target_idx[rows].tolist()])
        return F.mse_loss(self.eps(z_t, t, cond), noise)

    def preservation_loss(self, batch: int, objective: str = "conditional") -> tuple[torch.Tensor, torch.Tensor]:
        """SalUn's L_prev: forget prompts -> original model's anchor prediction; retain prompts -> unchanged.

        objective "conditional" is SalUn's ||eps_theta(z_t, c) - eps_theta0(z_t, c')||^2; "guided" compares the
        classifier-free-guided predictions the sampler follows, per sample relative to the original's guidance
        energy, so the high-noise steps that decide the layout count as much as the rest.
        """
        rows, z_t, t = self.noised(self.target_latents, batch)
        idx = self.target_idx[rows].tolist()
        forget = self._moved(z_t, t, self.text([self.spec.targets[i] for i in idx]),
                             self.text([self.spec.anchors[i] for i in idx]), objective)
        if self.retain_latents is None:
            return forget, torch.zeros((), device=self.device)
        rows, z_t, t = self.noised(self.retain_latents, batch)
        cond = self.text([self.spec.retains[i] for i in self.retain_idx[rows].tolist()])
        return forget, self._moved(z_t, t, cond, cond, objective)

    def _moved(self, z_t, t, cond, reference_cond, objective: str) -> torch.Tensor:
        """Distance of the current prediction for `cond` from the original's for `reference_cond`."""
        if objective == "conditional":
            return F.mse_loss(self.eps(z_t, t, cond), self.eps(z_t, t, reference_cond, original=True))
        # A 1e-3 relative change of eps_theta(c) flips shapes: what decides the sample is the guidance
        # direction eps(c) - eps(""), tiny at high noise, plus eps(""), which the conditional form ignores.
        uncond = self.uncond.expand(len(cond), -1, -1)
        z2, t2 = torch.cat([z_t, z_t]), torch.cat([t, t])
        eps_u, eps_c = self.eps(z2, t2, torch.cat([uncond, cond])).chunk(2)
        ref_u, ref_c = self.eps(z2, t2, torch.cat([uncond, reference_cond]), original=True).chunk(2)
        w = self.guidance
        energy = (w * (ref_c - ref_u)).pow(2).mean(dim=tuple(range(1, ref_c.dim())), keepdim=True)
        moved = (eps_u + w * (eps_c - eps_u)) - (ref_u + w * (ref_c - ref_u))
        return (moved.pow(2) / energy.clamp_min(1e-8)).mean()

    def ddim(self, steps: int) -> DDIMScheduler:
        sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps, device=self.device)
        return sched

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1], differentiable."""
        vae = self.pipe.vae
        return (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
