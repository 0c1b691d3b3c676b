"""Tiny random Stable-Diffusion-shaped pipelines, built in code with the real diffusers classes."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_tiny_pipeline(seed: int = 0, cross_attention: bool = True):
    """SD 1.x shape: CLIPTextModel + CLIP's real BPE tokenizer, UNet2DConditionModel, AutoencoderKL, DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trust_unlearn.clip_vocab import clip_tokenizer

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(model_max_length=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    down = ("CrossAttnDownBlock2D", "DownBlock2D") if cross_attention else ("DownBlock2D", "DownBlock2D")
    up = ("UpBlock2D", "CrossAttnUpBlock2D") if cross_attention else ("UpBlock2D", "UpBlock2D")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, down_block_types=down,
                                up_block_types=up, block_out_channels=(16, 32), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                                mid_block_type="UNetMidBlock2DCrossAttn" if cross_attention else None)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_tiny_clip(folder):
    from transformers import CLIPConfig, CLIPModel

    from trust_unlearn.clip_vocab import clip_tokenizer

    tokenizer = clip_tokenizer(model_max_length=16)
    config = CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "sd-tiny"
    build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-tiny")


def tiny_unlearn_config(model_dir, clip_dir, out, **overrides):
    """A TRUST run on the tiny pipeline small enough for a unit test (a few seconds); also used by
    scripts/figure_neutral_check.py."""
    from trust_unlearn.unlearn import UnlearnConfig

    common = dict(steps=4, batch=2, cache_images=4, cache_steps=2, seed=0)
    common.update(overrides.pop("common", {}))
    method_args = dict(saliency_steps=2, backprop_depth=1, saliency_batch=1, xi=1.0)
    method_args.update(overrides.pop("method_args", {}))
    cfg = dict(model=str(model_dir), concept="a red circle", anchor="a blue square",
               retain=["a green cross", "a yellow triangle"], scorer=str(clip_dir),
               out=str(out), evaluate=False, checkpoint_every=2, common=common, method_args=method_args)
    cfg.update(overrides)
    return UnlearnConfig(**cfg)


def testbed_unlearn_config(out, **overrides):
    """A TRUST run on the shipped testbed (its own scorer) small enough for a unit test; also used by
    scripts/figure_neutral_check.py."""
    from trust_unlearn.unlearn import UnlearnConfig

    common = dict(steps=4, batch=2, cache_images=4, cache_steps=2, probes=4, probe_steps=2)
    common.update(overrides.pop("common", {}))
    method_args = dict(saliency_steps=2, backprop_depth=1, saliency_batch=1)
    method_args.update(overrides.pop("method_args", {}))
    return UnlearnConfig(**{"model": "testbed", "method": "trust", "concept": "circle", "out": str(out), "evaluate": False,
                            "common": common, "method_args": method_args, **overrides})


@pytest.fixture
def tiny_run_config(tiny_model_dir, tiny_clip_dir, tmp_path):
    return lambda **overrides: tiny_unlearn_config(tiny_model_dir, tiny_clip_dir, **{"out": tmp_path / "out", **overrides})


def build_tiny_sd2_pipeline(seed: int = 0):
    """SD 2.x shape: v-prediction and OpenCLIP-style text states (wider, GELU, penultimate-layer sized)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = build_tiny_pipeline(seed)
    torch.manual_seed(seed)
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=96,
                                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=8,
                                                     hidden_act="gelu", bos_token_id=49406, eos_token_id=49407,
                                                     pad_token_id=0))
    from diffusers import UNet2DConditionModel

    config = dict(pipe.unet.config)
    config.update(cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True)
    pipe.unet = UNet2DConditionModel.from_config(config)
    pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return pipe


def build_tiny_sdxl_pipeline(seed: int = 0):
    """SDXL shape: two CLIP text encoders (the second with projection), added text/time conditioning."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from trust_unlearn.clip_vocab import clip_tokenizer

    torch.manual_seed(seed)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
                                cross_attention_dim=64, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32)),
        tokenizer=clip_tokenizer(8), tokenizer_2=clip_tokenizer(8), unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=False)
