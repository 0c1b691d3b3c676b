"""Baselines and TRUST ablations: each changes only what it should (tiny random pipelines, CPU)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trust_unlearn.errors import UserError
from trust_unlearn.methods import METHODS, get_method
from trust_unlearn.unlearn import run_unlearn

BASELINES = ("esd-x", "esd-u", "salun", "conceptprune", "uce")
ABLATIONS = ("trust-static", "trust-noise-saliency", "trust-zero", "trust-noreg")


def unet_state(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()


def changed(before, after):
    return {n for n in before if not torch.equal(before[n], after[n])}


def run(tiny_run_config, method, method_args=None, **common):
    cfg = tiny_run_config(method=method)
    cfg.method_args = dict(method_args or {})
    cfg.common.update(common)
    run_unlearn(cfg)
    return Path(cfg.out)


def setup(tiny_model_dir, method, method_args=None, scorer=None, **common):
    """A method on the tiny pipeline, built as the engine builds it, before its first step."""
    from trust_unlearn.concept_spec import resolve_spec
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.pipeline import load_model

    model = load_model(str(tiny_model_dir))
    spec = resolve_spec("a red circle", "a blue square", ["a green cross", "a yellow triangle"], None, False)
    ctx = RunContext(model, spec, CommonConfig(**{"steps": 2, "batch": 2, "cache_images": 4, "cache_steps": 2, **common}))
    if scorer:
        from trust_unlearn.evaluation.scorers import load_scorer

        ctx.scorer = load_scorer(str(scorer), False)
    cls = get_method(method)
    m = cls(ctx, cls.config_cls(**(method_args or {})))
    ctx.freeze_original(m.trainable())
    ctx.cache_original_images()
    return m, ctx


def direct(tiny_model_dir, method, method_args=None, steps=2, scorer=None, **common):
    """Run a method without the engine, to inspect its internal state (e.g. SalUn's weight mask)."""
    m, ctx = setup(tiny_model_dir, method, method_args, scorer, steps=steps, **common)
    before = {n: p.detach().clone() for n, p in ctx.unet.state_dict().items()}
    logs = [m.step(k) for k in range(steps)]
    return m, before, ctx.unet.state_dict(), logs


# ------------------------------------------------------------------ registry
def test_registry_knows_every_method():
    for name in ("trust", *BASELINES, *ABLATIONS):
        cls = get_method(name)
        assert cls.name == name and METHODS[name] is cls
        cls.config_cls()  # defaults construct
    with pytest.raises(UserError, match="unknown method 'esd'.*esd-u.*esd-x"):
        get_method("esd")


# ------------------------------------------------------------------ what each baseline may change
def test_esd_x_changes_only_cross_attention(tiny_run_config, tiny_model_dir):
    out = run(tiny_run_config, "esd-x", {"ddim_steps": 2}, steps=2)
    diff = changed(unet_state(tiny_model_dir), unet_state(out))
    assert diff and all(".attn2." in n for n in diff)


def test_esd_u_changes_everything_but_cross_attention(tiny_run_config, tiny_model_dir):
    out = run(tiny_run_config, "esd-u", {"xt": "cache"}, steps=2)
    diff = changed(unet_state(tiny_model_dir), unet_state(out))
    assert diff and not any(".attn2." in n or n.startswith(("time_embedding", "conv_out", "conv_norm_out")) for n in diff)
    assert any(".attn1." in n for n in diff) and any("resnets" in n for n in diff)


def test_salun_changes_only_its_static_half_mask(tiny_model_dir):
    m, before, after, logs = direct(tiny_model_dir, "salun", steps=2, lr=1e-2)
    mask = m.weight_mask
    total = sum(v.numel() for v in mask.values())
    assert sum(int(v.sum()) for v in mask.values()) == int(0.5 * total)
    assert logs[-1]["mask_fraction"] == pytest.approx(int(0.5 * total) / total)
    moved = False
    for n, w in before.items():
        if n in mask:
            assert torch.equal(w[~mask[n]], after[n][~mask[n]]), n
            moved |= not torch.equal(w, after[n])
        else:
            assert torch.equal(w, after[n])
    assert moved


def test_conceptprune_sets_only_ffn_weights_to_zero(tiny_run_config, tiny_model_dir):
    out = run(tiny_run_config, "conceptprune", {"early_steps": 2, "prompts": 2, "top_k": 0.05}, steps=1)
    before, after = unet_state(tiny_model_dir), unet_state(out)
    diff = changed(before, after)
    assert diff and all(n.endswith("ff.net.2.weight") for n in diff)
    for n in diff:
        moved = after[n] != before[n]
        assert (after[n][moved] == 0).all(), n
        assert (moved.any(0) & ~moved.all(0)).any(), n  # single weights, not whole input neurons (columns)


def test_uce_changes_only_attn2_k_and_v(tiny_run_config, tiny_model_dir):
    out = run(tiny_run_config, "uce", steps=1)
    diff = changed(unet_state(tiny_model_dir), unet_state(out))
    assert diff and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in diff)
    assert any(n.endswith("to_k.weight") for n in diff) and any(n.endswith("to_v.weight") for n in diff)


def test_uce_closed_form_maps_targets_to_anchors_and_keeps_preserved():
    from trust_unlearn.methods.uce import uce_solve

    torch.manual_seed(0)
    w = torch.randn(6, 10, dtype=torch.float64)
    ci, cs = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    cp = torch.randn(4, 10, dtype=torch.float64)
    new = uce_solve(w, ci, cs, cp, lamb=1e-6, s_e=1.0, s_p=1.0)
    assert torch.allclose(new @ ci.T, w @ cs.T, atol=1e-4)  # erase: c_i now reads like its anchor
    assert torch.allclose(new @ cp.T, w @ cp.T, atol=1e-4)  # preserve: unchanged
    assert torch.allclose(uce_solve(w, ci[:0], cs[:0], cp[:0], 0.1, 1.0, 1.0), w)  # nothing to do: W


def test_training_free_methods_do_nothing_after_step_zero(tiny_model_dir):
    for name, args in (("uce", {}), ("conceptprune", {"early_steps": 1, "prompts": 1})):
        m, _, _, logs = direct(tiny_model_dir, name, args, steps=1)
        snap = {n: p.detach().clone() for n, p in m.trainable().items()}
        m.step(1)
        assert all(torch.equal(snap[n], p) for n, p in m.trainable().items())


# ------------------------------------------------------------------ each baseline computes its reference's formula
def _states(pipe, prompts):
    """Token states as the reference scripts read them: the text encoder's last hidden state."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids)[0]


def _eps(unet, z, t, states):
    return unet(z, t, encoder_hidden_states=states).sample


@pytest.mark.parametrize("erase_from", [None, "a red circle on a plain background"])
def test_esd_loss_is_the_reference_target(tiny_model_dir, erase_from):
    import torch.nn.functional as F

    args = {"erase_concept": "circle", "erase_from": erase_from, "negative_guidance": 1.5}
    m, ctx = setup(tiny_model_dir, "esd-x", args)
    torch.manual_seed(1)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    pipe, unet = ctx.pipe, ctx.unet
    c_from = _states(pipe, [erase_from or "circle"] * 2)
    with torch.no_grad():
        e_null, e_erase = _eps(unet, z, t, _states(pipe, [""] * 2)), _eps(unet, z, t, _states(pipe, ["circle"] * 2))
        if erase_from is None:  # the paper's train-esd.py: eps0(x_t) - eta (eps0(x_t, c) - eps0(x_t))
            target = e_null - 1.5 * (e_erase - e_null)
        else:  # esd_sd.py: eps0(x_t, c_from) - eta' (eps0(x_t, c) - eps0(x_t)), its eta' = our eta + 1
            target = _eps(unet, z, t, c_from) - 2.5 * (e_erase - e_null)
        expected = F.mse_loss(_eps(unet, z, t, c_from), target)
    assert torch.allclose(m.loss(z, t).detach(), expected, rtol=1e-5, atol=1e-8)


def test_esd_xt_is_a_partial_ddim_trajectory_of_the_trained_model(tiny_model_dir):
    from diffusers import DDIMScheduler

    m, ctx = setup(tiny_model_dir, "esd-x", {"erase_concept": "circle", "erase_from": "a red circle", "ddim_steps": 4})
    sched = DDIMScheduler.from_config(ctx.pipe.scheduler.config)
    sched.set_timesteps(4)
    cond = _states(ctx.pipe, ["", "", "a red circle", "a red circle"])
    stops = set()
    while not stops & {2, 3}:  # until a trajectory of a few steps was checked
        gen = torch.Generator().set_state(ctx.rng.get_state())
        z_t, t = m.sample_xt(2)
        x = torch.randn((2, 4, 8, 8), generator=gen) * sched.init_noise_sigma
        stop = int(torch.randint(0, 4, (1,), generator=gen))
        with torch.no_grad():
            for step_t in sched.timesteps[:stop]:  # CFG 3.0 (ESD's start_guidance) on the erase_from prompt
                e_u, e_c = _eps(ctx.unet, torch.cat([x, x]), step_t, cond).chunk(2)
                x = sched.step(e_u + 3.0 * (e_c - e_u), step_t, x).prev_sample
        assert torch.allclose(z_t, x, atol=1e-5) and (t == sched.timesteps[stop]).all(), stop
        stops.add(stop)


def test_uce_edit_is_the_reference_closed_form(tiny_model_dir):
    from trust_unlearn.concept_spec import resolve_spec
    from trust_unlearn.methods.uce import Uce, UceConfig, default_guide

    m, ctx = setup(tiny_model_dir, "uce")
    assert (m.erase, m.guide, m.cfg.lamb) == ("a red circle", "a blue square", 0.5)  # the phrase and its anchor
    assert Uce(ctx, UceConfig(erase_concept="circle")).guide == ""  # no anchor for it: towards the unconditional
    phrase = "circle on striped background"  # on the testbed: the anchors' substitution applied to the phrase
    assert default_guide(resolve_spec(phrase), phrase) == "triangle on striped background"
    with pytest.raises(UserError, match="guide_concept equals erase_concept"):
        Uce(ctx, UceConfig(guide_concept="A red circle"))
    before = {n: p.detach().double() for n, p in m.trainable().items()}
    m.step(0)
    # train_erase.py's edit_model: old/new token states from each phrase's last word, cut to one length
    pipe = ctx.pipe
    tok = pipe.tokenizer(["a red circle", "a blue square"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    old, new = _states(pipe, ["a red circle", "a blue square"]).double()
    i, j = (int(tok.attention_mask[r].sum()) - 2 for r in range(2))
    far = max(i, j)
    old, new = old[i : len(old) - max(0, far - i)], new[j : len(new) - max(0, far - j)]
    retain = ["", "a green cross", "a yellow triangle"]  # the empty prompt is always preserved
    kept = _states(pipe, retain).double().flatten(0, 1)
    s_p = max(0.1, 1 / len(retain))
    for n, w in before.items():
        mat1, mat2 = 0.5 * w, 0.5 * torch.eye(w.shape[1], dtype=torch.float64)
        for k, k_new in zip(old, new):
            mat1, mat2 = mat1 + torch.outer(w @ k_new, k), mat2 + torch.outer(k, k)
        for k in kept:
            mat1, mat2 = mat1 + s_p * torch.outer(w @ k, k), mat2 + s_p * torch.outer(k, k)
        assert torch.allclose(m.trainable()[n].double(), mat1 @ torch.inverse(mat2), rtol=1e-4, atol=1e-6), n


def test_salun_mask_is_the_top_half_of_the_summed_forget_gradient(tiny_model_dir):
    import torch.nn.functional as F

    m, ctx = setup(tiny_model_dir, "salun", {"mask_guidance": 2.0})
    params = dict(ctx.unet.named_parameters())
    gen = torch.Generator().set_state(ctx.rng.get_state())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    latents, uncond = ctx.target_latents, _states(ctx.pipe, [""] * 2)
    for start in (0, 2):  # generate_mask: one pass over the forget set (4 images) in batches of 2
        rows = torch.arange(start, start + 2)
        t = torch.randint(0, 1000, (2,), generator=gen)
        noise = torch.randn(latents[rows].shape, generator=gen)
        z = ctx.noise_scheduler.add_noise(latents[rows], noise, t)
        cond = _states(ctx.pipe, [ctx.spec.targets[i] for i in ctx.target_idx[rows]])
        e_c, e_u = _eps(ctx.unet, torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, uncond])).chunk(2)
        loss = -F.mse_loss(noise, 3.0 * e_c - 2.0 * e_u)  # (1 + c) eps(c) - c eps("")
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            total[n] += 0 if g is None else g
    score = torch.cat([g.abs().flatten() for g in total.values()])  # |sum g|, not sum |g|
    m.step(0)
    keep = torch.cat([m.weight_mask[n].flatten() for n in params])
    assert int(keep.sum()) == int(0.5 * len(score))
    assert score[keep].min() >= score[~keep].max() - 1e-6 * score.max()


def test_salun_loss_is_the_reference_forget_and_retain_terms(tiny_model_dir):
    import torch.nn.functional as F

    m, ctx = setup(tiny_model_dir, "salun")
    with torch.no_grad():  # the model has moved: the anchor's prediction is the current model's
        for p in ctx.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = ctx.rng.get_state()
    forget, retain = m.loss()
    ctx.rng.set_state(state)
    spec, unet = ctx.spec, ctx.unet
    rows, z, t = ctx.noised(ctx.target_latents, 2)
    idx = ctx.target_idx[rows].tolist()
    with torch.no_grad():
        pseudo = _eps(unet, z, t, _states(ctx.pipe, [spec.anchors[i] for i in idx]))
        expected_forget = F.mse_loss(_eps(unet, z, t, _states(ctx.pipe, [spec.targets[i] for i in idx])), pseudo)
        rows, z, t, noise = ctx._draw(ctx.retain_latents, 2)
        cond = _states(ctx.pipe, [spec.retains[i] for i in ctx.retain_idx[rows].tolist()])
        expected_retain = F.mse_loss(_eps(unet, z, t, cond), noise)  # the plain diffusion loss on retain images
    assert torch.allclose(forget.detach(), expected_forget, rtol=1e-5)
    assert torch.allclose(retain.detach(), expected_retain, rtol=1e-5)


def test_conceptprune_selection_is_the_reference_wanda_rule():
    from trust_unlearn.methods.conceptprune import skilled_weights

    torch.manual_seed(0)
    w, norm_target, norm_base = torch.randn(5, 20), torch.rand(20), torch.rand(20)
    got = skilled_weights(w, norm_target, norm_base, 4)
    for i in range(5):  # wanda.py: per row, the top k of |W| * ||X|| for the target, kept where it beats the base
        s_target, s_base = w[i].abs() * norm_target, w[i].abs() * norm_base
        top = torch.argsort(s_target, descending=True)[:4].tolist()
        assert set(got[i].nonzero().flatten().tolist()) == {j for j in top if s_target[j] > s_base[j]}
    assert got.any()


def test_conceptprune_activation_norms_normalise_every_token_of_the_cfg_batch(tiny_model_dir):
    import torch.nn.functional as F
    from diffusers import DDIMScheduler

    m, ctx = setup(tiny_model_dir, "conceptprune", {"early_steps": 1})
    noise = torch.randn(1, 4, 8, 8)
    norms = m.activation_norms(["a red circle", "a blue square"], noise)[0]
    # by hand: the GEGLU outputs (ff.net.2's input) at the first of 50 DDIM steps, both CFG halves
    seen = {}
    hooks = [ctx.unet.get_submodule(n.replace("net.2.weight", "net.0")).register_forward_hook(
        lambda mod, inp, out, n=n: seen.__setitem__(n, out)) for n in norms]
    sched = DDIMScheduler.from_config(ctx.pipe.scheduler.config)
    sched.set_timesteps(50)
    x = noise.expand(2, -1, -1, -1) * sched.init_noise_sigma
    with torch.no_grad():
        cond = _states(ctx.pipe, ["", "", "a red circle", "a blue square"])
        _eps(ctx.unet, torch.cat([x, x]), sched.timesteps[0], cond)
    for h in hooks:
        h.remove()
    for n, got in norms.items():
        tokens = seen[n].flatten(0, -2)
        assert torch.allclose(got, F.normalize(tokens, dim=1).norm(dim=0), rtol=1e-4, atol=1e-6), n


def test_conceptprune_zeroes_exactly_the_weights_it_selected(tiny_model_dir):
    args = {"early_steps": 2, "prompts": 2, "top_k": 0.05}
    m, before, after, logs = direct(tiny_model_dir, "conceptprune", args, steps=1)
    mask = m.weight_mask
    assert logs[0]["mask_elements"] == sum(int(v.sum()) for v in mask.values()) > 0
    for n, w in before.items():
        if n in mask:
            assert torch.equal(after[n], w.masked_fill(mask[n], 0)), n
            assert (mask[n].sum(1) <= 2 * max(1, int(0.05 * w.shape[1]))).all()  # top-k per row, 2 steps
        else:
            assert torch.equal(w, after[n]), n


@pytest.mark.parametrize("method,args,says", [
    ("esd-u", {"ddim_steps": 0}, "ddim_steps"),
    ("esd-x", {"erase_concept": " "}, "erase_concept is empty"),
    ("esd-u", {"erase_from": ""}, "erase_from is empty"),
    ("salun", {"threshold": 0.0}, "threshold must be"),
    ("salun", {"mask_batches": 0}, "mask_batches must be"),
    ("conceptprune", {"top_k": 2.0}, "top_k must be"),
    ("conceptprune", {"base": "retain"}, "unknown base"),
    ("conceptprune", {"early_steps": 60}, "early_steps <= num_steps"),
    ("uce", {"projections": "q"}, "projections must be"),
    ("uce", {"erase_concept": ""}, "erase_concept is empty"),
])
def test_reference_options_are_checked(method, args, says):
    with pytest.raises(UserError, match=says):
        get_method(method).config_cls(**args).validate()


# ------------------------------------------------------------------ ablations
def _history(out):
    t = load_file(out / "masks.safetensors")
    names = {k.rsplit(".", 1)[0] for k in t}
    return {n: [frozenset(t[f"{n}.indices"][t[f"{n}.offsets"][i]:t[f"{n}.offsets"][i + 1]].tolist())
                for i in range(len(t[f"{n}.offsets"]) - 1)] for n in names}


TRUST_TINY = dict(saliency_steps=2, backprop_depth=1, saliency_batch=1, xi=1.0)


def test_trust_static_keeps_one_mask(tiny_run_config):
    out = run(tiny_run_config, "trust-static", TRUST_TINY, steps=3)
    for steps in _history(out).values():
        assert len(set(steps)) == 1


@pytest.mark.parametrize("name", ["trust-noise-saliency", "trust-noreg"])
def test_trust_variants_change_only_cross_attention_qkv(tiny_run_config, tiny_model_dir, name):
    out = run(tiny_run_config, name, TRUST_TINY, steps=2)
    diff = changed(unet_state(tiny_model_dir), unet_state(out))
    assert diff and all(n.endswith(("attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight")) for n in diff)
    if name == "trust-noreg":
        import json

        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        assert all(r["reg_loss"] == 0 for r in rows)


def test_trust_zero_zeroes_the_concept_neurons(tiny_model_dir, tiny_clip_dir):
    m, before, after, logs = direct(tiny_model_dir, "trust-zero", TRUST_TINY, steps=1, scorer=tiny_clip_dir, lr=0.0)
    assert logs[0]["zeroed"] > 0
    for n, rows in m.mask.items():
        assert (after[n][rows] == 0).all()
        assert torch.equal(after[n][~rows], before[n][~rows])


# ------------------------------------------------------------------ bad input
def test_method_options_are_read_as_their_declared_types():
    """YAML reads --method-arg alpha=1e6 as the string '1e6' and steps=3 as an int: both are numbers."""
    from trust_unlearn.methods.salun import SalunConfig
    from trust_unlearn.unlearn import _typed

    cfg = _typed(SalunConfig, {"alpha": "1e6", "threshold": 1, "mask_batches": 2.0, "mask_guidance": None}, "salun")
    assert (cfg.alpha, cfg.threshold, cfg.mask_batches, cfg.mask_guidance) == (1e6, 1.0, 2, None)
    assert isinstance(cfg.threshold, float) and isinstance(cfg.mask_batches, int)


@pytest.mark.parametrize("method,args,says", [
    ("esd-x", {"xt": "dream"}, "unknown xt source"),  # the rest: test_reference_options_are_checked
    ("uce", {"no_such_option": 1}, "unknown uce option"),
    ("salun", {"alpha": "lots"}, r"salun option alpha='lots' must be a number: write e.g. alpha=0.5"),
    ("salun", {"mask_batches": 2.5}, "salun option mask_batches=2.5 must be a whole number"),
    ("esd-x", {"erase_concept": 3}, "esd-x option erase_concept=3 must be text"),
])
def test_bad_method_options_give_one_clear_error(tiny_run_config, method, args, says):
    cfg = tiny_run_config(method=method)
    cfg.method_args = args
    with pytest.raises(UserError, match=says):
        run_unlearn(cfg)
