"""The shipped testbed: a genuine diffusers pipeline, its judge, export and the evaluation core."""
import json
import subprocess
import sys

import pytest
import torch

from trust_unlearn.evaluation.evaluate import EvalConfig, evaluate
from trust_unlearn.evaluation.judges import get_judge
from trust_unlearn.pipeline import export_pipeline, generate, load_model
from trust_unlearn.world.concepts import parse_concept
from trust_unlearn.world.shapes import random_scenes, render


@pytest.fixture(scope="module")
def testbed():
    return load_model("testbed")


def test_testbed_is_a_stable_diffusion_pipeline(testbed):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    pipe = testbed.pipe
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert pipe.tokenizer.model_max_length == 16
    assert testbed.resolution == 32 and pipe.vae_scale_factor == 4


def test_judge_is_accurate_on_fresh_samples():
    g = torch.Generator().manual_seed(12345)  # not a training seed
    scenes = random_scenes(1024, g)
    readings = get_judge("shapes").read(render(scenes, g))
    for attr in ("shape", "colour", "background"):
        acc = sum(r[attr] == getattr(s, attr) for r, s in zip(readings, scenes)) / len(scenes)
        assert acc >= 0.99, (attr, acc)


def test_scorer_reads_every_size_a_generator_draws():
    """TRUST reads its own generations with the scorer; shapes shrink while a concept is unlearned."""
    from trust_unlearn.evaluation.judge_check import check_scorer

    result = check_scorer(per_bucket=64, seed=1)
    assert not result["missed"], result["buckets"]
    assert result["buckets"]["6-8 px"]["shape"] >= 0.98


def test_scorer_texts_embedded_without_keeping_leave_the_cache_as_it_was():
    """The stopping probes compare retain images with captions training may read later: those must not be cached."""
    from trust_unlearn.evaluation.scorers import TestbedScorer

    scorer, texts = TestbedScorer(), ["a red circle", "a blue square on a striped background"]
    fresh = scorer.text_features(texts, keep=False)
    assert scorer._text_cache == {}
    assert torch.equal(fresh, scorer.text_features(texts))  # the same batch, now kept
    assert set(scorer._text_cache) == set(texts)


def test_export_roundtrip_with_plain_diffusers(testbed, tmp_path):
    out = export_pipeline(testbed, tmp_path / "exported")
    ours = generate(testbed, ["a red circle on a striped background"] * 2, [7, 8], num_inference_steps=8)
    script = f"""
import sys, json, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(out)!r})
assert not any(m.startswith("trust_unlearn") for m in sys.modules)
lat = torch.stack([torch.randn((pipe.unet.config.in_channels, 8, 8), generator=torch.Generator().manual_seed(s)) for s in (7, 8)])
img = pipe(["a red circle on a striped background"] * 2, latents=lat * pipe.scheduler.init_noise_sigma,
           num_inference_steps=8, guidance_scale=2.5, height=32, width=32, output_type="pt").images
torch.save(img, {str(tmp_path / "plain.pt")!r})
print(type(pipe).__name__, type(pipe.text_encoder).__name__)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "StableDiffusionPipeline BertModel" in proc.stdout
    plain = torch.load(tmp_path / "plain.pt")
    assert torch.allclose(plain, ours, atol=1e-4)


def test_evaluate_on_a_tiny_setting(testbed, tmp_path, monkeypatch):
    monkeypatch.setenv("TRUST_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(target_prompts=2, target_seeds=2, retain_seeds=1, num_inference_steps=6)
    result = evaluate(testbed, parse_concept("red circle"), cfg, reference=testbed)
    assert result["n_target_images"] == 4 and result["n_retain_images"] == 30
    assert 0 <= result["forget_rate"] <= 1 and 0 <= result["retain_accuracy"] <= 1
    assert "lookalike_retain_accuracy" in result
    assert result["fd_judge"] == pytest.approx(0.0, abs=1e-3)  # the model against itself, same seeds
    assert len(list((tmp_path / "cache" / "images").glob("*.safetensors"))) == 2  # target + retain, reused as reference
    json.dumps(result)  # the CLI writes it as JSON


def test_check_reports_bars_and_heldout(testbed):
    from trust_unlearn.testbed.check import check_testbed

    result = check_testbed(testbed, images_per_prompt=1, heldout_images=1)
    assert set(result["in_vocabulary"]) == {"shape", "colour", "background"}
    assert result["n_in_vocabulary"] == 16 and result["n_heldout"] == 64
    by_shape = result["shape_accuracy_by_shape"]
    assert set(by_shape) == {"circle", "square", "triangle", "cross"}
    assert abs(sum(by_shape.values()) / 4 - result["in_vocabulary"]["shape"]) < 1e-9  # 4 prompts per shape
    assert all(0 <= v <= 1 for v in result["heldout"].values())
    assert len(result["heldout_evoked"]) == 64


def test_training_stages_chain_and_skip_when_done(tmp_path, capsys):
    """vae -> unet -> unet_refine on a few steps: the refine stage warm-starts from the unet stage's
    weights, moves them, and finished stages are skipped on a re-run."""
    from diffusers import UNet2DConditionModel

    from trust_unlearn.testbed.train import TrainConfig, train_testbed

    cfg = TrainConfig(vae_steps=2, vae_batch=4, unet_steps=2, unet_refine_steps=2, unet_batch=4,
                      checkpoint_every=1, stages=["vae", "unet"])
    train_testbed(tmp_path, cfg)
    first = UNet2DConditionModel.from_pretrained(tmp_path / "unet").state_dict()
    cfg.stages = ["vae", "unet", "unet_refine"]
    train_testbed(tmp_path, cfg)
    assert "stage vae: done already" in capsys.readouterr().out
    refined = UNet2DConditionModel.from_pretrained(tmp_path / "unet").state_dict()
    assert any(not torch.equal(first[k], refined[k]) for k in first)
    assert json.loads((tmp_path / "unet_refine.json").read_text())["unet_refine_steps"] == 2
    assert set(json.loads((tmp_path / "stage_seconds.json").read_text())) == {"vae", "unet", "unet_refine"}
