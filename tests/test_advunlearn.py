"""AdvUnlearn: its attack is an attack, it trains only the chosen component, and its result is saved."""
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trust_unlearn.errors import UserError
from trust_unlearn.methods import get_method
from trust_unlearn.methods.advunlearn import AdvUnlearnConfig
from trust_unlearn.unlearn import run_unlearn

FAST = {"xt": "cache", "warmup_steps": 0, "attack_steps": 2}  # an attack at every step, two inner steps


def setup(tiny_model_dir, method_args=None, **common):
    """The method on the tiny pipeline, built as the engine builds it, before its first step."""
    from trust_unlearn.concept_spec import resolve_spec
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.pipeline import load_model

    model = load_model(str(tiny_model_dir))
    spec = resolve_spec("a red circle", "a blue square", ["a green cross", "a yellow triangle"], None, False)
    ctx = RunContext(model, spec, CommonConfig(**{"steps": 2, "batch": 2, "cache_images": 4, "cache_steps": 2, **common}))
    cls = get_method("advunlearn")
    m = cls(ctx, cls.config_cls(**(method_args or {})))
    ctx.freeze_original(m.trainable())
    ctx.cache_original_images()
    return m, ctx


def states(module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


def changed(before, after) -> set[str]:
    return {n for n in before if not torch.equal(before[n], after[n])}


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("position, typed", [("prefix", "blue a red circle"), ("suffix", "a red circle blue")])
def test_adversarial_states_are_the_pipeline_states_of_the_typed_prompt(tiny_model_dir, position, typed):
    m, ctx = setup(tiny_model_dir, {"adv_position": position})
    blue = m.text.tokenizer("blue", add_special_tokens=False).input_ids
    word = m.text.embedding.weight.detach()[blue]
    torch.testing.assert_close(m.adversarial_states(word, 1), ctx.text([typed]))
    torch.testing.assert_close(m.current_states(["a green cross"]), ctx.text(["a green cross"]))


@pytest.mark.parametrize("component", ["text_encoder", "unet_xattn"])
def test_inner_attack_lowers_the_attacked_loss(tiny_model_dir, component):
    m, ctx = setup(tiny_model_dir, {"component": component, "xt": "cache", "attack_xt": "cache", "attack_batch": 4, "warmup_steps": 5,
                                    "attack_steps": 20, "attack_lr": 1e-2}, lr=1e-2, steps=6)
    for k in range(5):  # plain ESD first: the concept must be erased for there to be something to recover
        m.step(k)
    _, z_t, t = ctx.noised(ctx.target_latents, 16)  # a fixed batch the attack never sees
    start = m.initial_adv()
    found, losses = m.attack(start)
    with torch.no_grad():
        before, after = m.attack_loss(start, z_t, t).item(), m.attack_loss(found, z_t, t).item()
    assert after < 0.8 * before and losses[-1] < losses[0]


@pytest.mark.parametrize("component", ["text_encoder", "unet_xattn"])
def test_steps_change_only_the_chosen_component(tiny_model_dir, component):
    m, ctx = setup(tiny_model_dir, {**FAST, "component": component}, lr=1e-2)
    unet0, text0 = states(ctx.unet), states(ctx.pipe.text_encoder)
    logs = [m.step(k) for k in range(2)]
    assert all("attack_loss_last" in row for row in logs)
    unet_diff, text_diff = changed(unet0, states(ctx.unet)), changed(text0, states(ctx.pipe.text_encoder))
    if component == "text_encoder":
        assert not unet_diff and text_diff
        assert not any("embeddings." in n for n in text_diff)  # the reference leaves the embeddings alone
    else:
        assert not text_diff and unet_diff and all(".attn2." in n for n in unet_diff)


@pytest.mark.parametrize("args, says", [
    ({"component": "vae"}, "unknown component 'vae'; choose one of text_encoder, unet_xattn"),
    ({"adv_position": "middle"}, "unknown adv_position"),
    ({"attack_init": "zeros"}, "unknown attack_init"),
    ({"attack_update": "sgd"}, "unknown attack_update"),
    ({"xt": "noise"}, "unknown xt"),
    ({"attack_steps": 0}, "attack_steps must be at least 1"),
    ({"adv_tokens": 0}, "adv_tokens must be at least 1"),
    ({"attack_every": 0}, "attack_every must be at least 1"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"attack_lr": 0.0}, "attack_lr must be positive"),
    ({"retain_loss_w": -1.0}, "retain_loss_w >= 0"),
    ({"erase_concept": " "}, "erase_concept is empty"),
])
def test_bad_options_give_one_clear_error(args, says):
    with pytest.raises(UserError, match=says):
        AdvUnlearnConfig(**args).validate()


def test_the_default_warm_up_is_a_fifth_of_the_run_and_leaves_steps_to_attack(tiny_model_dir):
    """The reference warms up 200 of its 1000 iterations; a fixed 200 would never attack a 200-step run."""
    m, _ = setup(tiny_model_dir, {"xt": "cache", "attack_xt": "cache", "attack_steps": 1}, steps=10)
    logs = [m.step(k) for k in range(10)]
    assert [k for k, row in enumerate(logs) if "attack_loss_last" in row] == list(range(2, 10))
    with pytest.raises(UserError, match="warmup_steps=10 leaves none of the 10 steps to the inner attack"):
        setup(tiny_model_dir, {"warmup_steps": 10}, steps=10)


def test_too_many_adversarial_tokens_and_unknown_options_are_user_errors(tiny_model_dir, tiny_run_config):
    with pytest.raises(UserError, match="adv_tokens=4 and 'a red circle' .* exceed"):  # the tiny tokenizer holds 8
        setup(tiny_model_dir, {"adv_tokens": 4})
    cfg = tiny_run_config(method="advunlearn")
    cfg.method_args = {"attack_step": 3}
    with pytest.raises(UserError, match=r"unknown advunlearn option\(s\) \['attack_step'\]"):
        run_unlearn(cfg)


def test_run_unlearn_saves_the_changed_text_encoder(tiny_run_config, tiny_model_dir):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    digest = folder_digest(tiny_model_dir)
    cfg = tiny_run_config(method="advunlearn")
    cfg.method_args = {"warmup_steps": 0, "attack_steps": 2, "ddim_steps": 2}  # xt=sample: the reference's x_t
    cfg.common.update(steps=2, lr=1e-2)
    run_unlearn(cfg)
    out = Path(cfg.out)
    text = lambda folder: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").state_dict()
    unet = lambda folder: UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
    assert changed(text(tiny_model_dir), text(out))
    assert not changed(unet(tiny_model_dir), unet(out))
    assert load_file(out / "delta.safetensors") == {}  # the delta holds UNet tensors only: none changed
    assert folder_digest(tiny_model_dir) == digest


def test_each_inner_step_draws_its_own_x_t_of_the_attack_batch(tiny_model_dir):
    """As the reference: a fresh x_t per inner step, `attack_batch` of them, from `attack_xt`."""
    m, _ = setup(tiny_model_dir, {**FAST, "attack_steps": 3, "attack_batch": 2, "attack_xt": "cache"})
    calls, draw = [], m.xt
    m.xt = lambda batch=None, source=None: calls.append((batch, source)) or draw(batch, source)
    m.attack(m.initial_adv())
    assert calls == [(2, "cache")] * 3


def test_the_evaluation_image_cache_tells_a_trained_text_encoder_apart(tiny_model_dir, tmp_path, monkeypatch):
    """The evaluation caches images by a fingerprint of the model's weights. It once digested the UNet alone, so a
    text-encoder method (AdvUnlearn) was graded on the original model's cached images."""
    from trust_unlearn.evaluation.evaluate import PromptSet, cached_generate, model_fingerprint
    from trust_unlearn.pipeline import load_model

    monkeypatch.setenv("TRUST_CACHE", str(tmp_path))
    original, trained = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    assert model_fingerprint(original) == model_fingerprint(trained)
    with torch.no_grad():
        trained.pipe.text_encoder.get_input_embeddings().weight.mul_(-1.0)
    assert model_fingerprint(original) != model_fingerprint(trained)
    prompts = PromptSet(["a red circle"], [None], [0])
    before = cached_generate(original, prompts, 2, 1.0, "original")
    after = cached_generate(trained, prompts, 2, 1.0, "trained")
    assert not torch.equal(before, after)
