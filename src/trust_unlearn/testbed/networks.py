"""The testbed's networks: SD-shaped diffusers components (small), the judge and the scorer.

The VAE and UNet are stock diffusers classes with small configs, so the testbed is a genuine
StableDiffusionPipeline. The judge (what decides results) and the scorer (the CLIP-like alignment
signal TRUST differentiates) are separate networks, trained separately.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from trust_unlearn.world.shapes import BACKGROUNDS, COLOURS, SHAPES

TEXT_DIM = 384  # MiniLM hidden size
TOKENIZER_MAX_LENGTH = 16
LATENT_CHANNELS = 8  # 8x8x4 (SD's channel count) capped shape accuracy at ~91 % on reconstructions; 8x8x8 reads 98 %


def build_vae() -> AutoencoderKL:
    """32x32x3 <-> 8x8x8 latent (two downsamplings), like SD's VAE but tiny."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=32,
        mid_block_add_attention=False,
    )


def build_unet() -> UNet2DConditionModel:
    """A small SD-style UNet on the 8x8x8 latent; cross-attention (attn2) reads MiniLM states."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 96, 96),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def build_sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler.from_config(build_train_scheduler().config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


class _ConvTrunk(nn.Sequential):
    def __init__(self, width: int = 32, out_dim: int = 128):
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU()]

        super().__init__(
            *block(3, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, out_dim), nn.SiLU(),
        )


NONE = "none"  # the judge's abstention: no recognisable shape (shape head) / no object at all (colour head)


class Judge(nn.Module):
    """Concept classifier with shape / colour / background heads; its features give FD-judge.

    Shape and colour can read "none": an amorphous blob has a colour but no shape, an empty background
    neither, so erasing a concept by destroying the image is not counted as forgetting it.
    """

    heads = {"shape": (*SHAPES, NONE), "colour": (*COLOURS, NONE), "background": BACKGROUNDS}

    def __init__(self, feature_dim: int = 128):
        super().__init__()
        self.trunk = _ConvTrunk(out_dim=feature_dim)
        for name, values in self.heads.items():
            setattr(self, name, nn.Linear(feature_dim, len(values)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images in [0, 1], (B, 3, 32, 32)."""
        return self.trunk(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {name: getattr(self, name)(f) for name in self.heads}


class Scorer(nn.Module):
    """CLIP-like image-text model: conv image encoder + projection of pooled MiniLM sentence embeddings."""

    def __init__(self, embed_dim: int = 128):
        super().__init__()
        self.image_encoder = _ConvTrunk(width=24, out_dim=256)
        self.image_proj = nn.Linear(256, embed_dim)
        self.text_proj = nn.Sequential(nn.Linear(TEXT_DIM, 256), nn.SiLU(), nn.Linear(256, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.66))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(images * 2 - 1)), dim=-1)

    def embed_texts(self, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(sentence_embeddings), dim=-1)
