"""Robust TRUST (`trust-robust`) on the tiny SD-shaped pipeline: the inner attack attacks, updates stay selective,
bad options are refused, and `in_saliency` / `in_loss` each change what they claim."""
import pytest
import torch

from trust_unlearn.errors import UserError
from trust_unlearn.methods.trust_robust import RobustConfig, TrustRobust
from trust_unlearn.methods.trust import Trust
from trust_unlearn.neurons import concept_neuron_masks, jaccard
from trust_unlearn.unlearn import run_unlearn

FAST = dict(saliency_steps=2, backprop_depth=1, saliency_batch=1, xi=1.0)


def build(tiny_model_dir, tiny_clip_dir, **options):
    """TrustRobust on the tiny pipeline, set up as the engine does, before its first step."""
    from trust_unlearn.concept_spec import resolve_spec
    from trust_unlearn.evaluation.scorers import load_scorer
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.pipeline import load_model

    spec = resolve_spec("a red circle", "a blue square", ["a green cross", "a yellow triangle"], None, False)
    ctx = RunContext(load_model(str(tiny_model_dir)), spec, CommonConfig(batch=2, cache_images=4, cache_steps=2))
    ctx.scorer = load_scorer(str(tiny_clip_dir), False)
    method = TrustRobust(ctx, RobustConfig(**{**FAST, **options}))
    ctx.freeze_original(method.trainable())
    ctx.cache_original_images()
    return method, ctx


def test_inner_attack_lowers_the_diffusion_loss(tiny_model_dir, tiny_clip_dir):
    method, ctx = build(tiny_model_dir, tiny_clip_dir, attack_steps=8, attack_lr=1.0, attack_batch=4)
    log = method.inner_attack()
    assert log["attack_loss"] < log["attack_loss_init"] - 1e-3  # descent made progress (not the start kept)
    assert log["attack_loss"] < log["attack_loss_plain"] - 1e-3  # the concept comes back more than for the prompt
    (states, rows), = method.bank
    plain = ctx.text([ctx.spec.targets[i] for i in ctx.target_idx[rows].tolist()])
    assert states.shape == plain.shape and not torch.allclose(states, plain)
    prompt_tokens = method.slots[0][2][0]  # causal text encoder: states before the appended tokens are the prompt's
    assert torch.allclose(states[:, :prompt_tokens], plain[:, :prompt_tokens], atol=1e-6)


def test_only_masked_rows_change(tiny_model_dir, tiny_clip_dir):
    method, ctx = build(tiny_model_dir, tiny_clip_dir, attack_every=2)
    others = {n: p.detach().clone() for n, p in ctx.unet.named_parameters() if n not in method.params}
    ever = {n: torch.zeros(p.shape[0], dtype=torch.bool) for n, p in method.params.items()}
    logs = []
    for k in range(3):
        logs.append(method.step(k))
        for n in ever:
            ever[n] |= method.mask[n].cpu()
    assert ["attack_loss" in log for log in logs] == [True, False, True] and len(method.bank) == 2
    assert all(log["attack_seconds"] >= 0 and "adv_forget_loss" in log for log in logs)
    changed = False
    for n, p in method.params.items():
        moved = (p.detach() != ctx.original[n]).any(dim=1).cpu()
        assert not (moved & ~ever[n]).any(), f"{n}: a row outside every mask moved"
        changed |= bool(moved.any())
    assert changed
    assert all(torch.equal(p, others[n]) for n, p in ctx.unet.named_parameters() if n in others)


@pytest.mark.parametrize("options,says", [
    ({"attack_every": 0}, "attack_every must be >= 1"),
    ({"attack_steps": 0}, "attack_steps must be >= 1"),
    ({"adv_tokens": 0}, "adv_tokens must be >= 1"),
    ({"attack_lr": 0.0}, "attack_lr must be positive"),
    ({"in_saliency": False, "in_loss": False}, "both off"),
])
def test_bad_options_give_one_clear_error(options, says):
    with pytest.raises(UserError, match=says):
        RobustConfig(**options).validate()
    RobustConfig(**{k: v for k, v in options.items() if k in ("in_saliency",)}).validate()  # one switch alone is fine


def test_engine_refuses_too_many_adversarial_tokens(tiny_run_config):
    with pytest.raises(UserError, match="no room for the prompt"):  # the tiny tokenizer holds 8 tokens
        run_unlearn(tiny_run_config(method="trust-robust", method_args={**FAST, "adv_tokens": 6}))


def test_in_saliency_adds_the_adversarial_gradient_to_the_mask(tiny_model_dir, tiny_clip_dir):
    method, ctx = build(tiny_model_dir, tiny_clip_dir)
    method.inner_attack()
    rng = ctx.rng.get_state()
    with_adv = method.saliency_gradients()
    ctx.rng.set_state(rng)
    method.cfg.in_saliency = False
    plain = method.saliency_gradients()
    ctx.rng.set_state(rng)
    alone = Trust.saliency_gradients(method)  # Trust's own estimate, same draws
    assert all(torch.equal(plain[n], alone[n]) for n in plain)
    assert jaccard(concept_neuron_masks(with_adv, 1.0), concept_neuron_masks(plain, 1.0)) < 1.0
    assert any(not torch.equal(with_adv[n], plain[n]) for n in plain)


def test_in_loss_adds_the_adversarial_forget_term(tiny_model_dir, tiny_clip_dir):
    logs, weights = {}, {}
    for in_loss in (True, False):
        method, ctx = build(tiny_model_dir, tiny_clip_dir, in_loss=in_loss, reg="none", beta=0.0)
        logs[in_loss] = method.step(0)
        weights[in_loss] = {n: p.detach().clone() for n, p in method.params.items()}
    on, off = logs[True], logs[False]
    assert "adv_forget_loss" not in off and on["adv_forget_loss"] > 0
    assert on["forget_loss"] == off["forget_loss"]  # same draws up to the adversarial term
    assert on["loss"] == pytest.approx(off["loss"] + on["adv_forget_loss"], rel=1e-5)
    assert any(not torch.equal(weights[True][n], weights[False][n]) for n in weights[True])


def test_robust_flag_selects_the_method():
    from trust_unlearn.cli import build_parser, unlearn_config_from_args

    def parse(*flags):
        return unlearn_config_from_args(build_parser().parse_args(["unlearn", "--concept", "circle", *flags]))

    assert parse("--robust").method == "trust-robust" and parse().method == "trust"
    assert parse("--robust", "--method-arg", "attack_every=5").method_args["attack_every"] == 5
    with pytest.raises(UserError, match="--robust selects"):
        parse("--robust", "--method", "esd-x")
    assert "probe_every" not in parse("--robust").common  # its tuned settings never probe (it never stops)
    assert parse("--robust", "--stop").common == {"stop": True, "probe_every": 25}  # told to stop, it probes
    assert parse("--robust", "--stop", "--probe-every", "10").common["probe_every"] == 10


def test_resume_restores_the_adversarial_bank(tiny_run_config, tmp_path):
    from test_trust import unet_state

    args = {**FAST, "attack_every": 3}
    full = tiny_run_config(method="trust-robust", method_args=args, out=str(tmp_path / "full"))
    run_unlearn(full)

    def crash_after_two(k):
        if k == 2:
            raise KeyboardInterrupt

    part = tiny_run_config(method="trust-robust", method_args=args, out=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        run_unlearn(part, on_step=crash_after_two)
    run_unlearn(part, resume=True)  # step 2 trains on the restored bank (an empty one would attack again)
    a, b = unet_state(tmp_path / "full"), unet_state(tmp_path / "part")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
