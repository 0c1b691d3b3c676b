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


def direct(tiny_model_dir, method, method_args=None, steps=2, scorer=None, **common):
    """Run a method without the engine, to inspect its internal state (e.g. SalUn's weight mask)."""
    from trust_unlearn.concept_spec import resolve_spec
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.pipeline import load_model

    model = load_model(str(tiny_model_dir))
    spec = resolve_spec("a red circle", "a blue square", ["a green cross", "a yellow triangle"], None, False)
    ctx = RunContext(model, spec, CommonConfig(**{"steps": steps, "batch": 2, "cache_images": 4, "cache_steps": 2, **common}))
    if scorer:
        from trust_unlearn.scorers import load_scorer

        ctx.scorer = load_scorer(str(scorer), False)
    cls = get_method(method)
    m = cls(ctx, cls.config_cls(**(method_args or {})))
    ctx.freeze_original(m.trainable())
    before = {n: p.detach().clone() for n, p in model.pipe.unet.state_dict().items()}
    ctx.cache_original_images()
    logs = [m.step(k) for k in range(steps)]
    return m, before, model.pipe.unet.state_dict(), logs


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
    frac = sum(int(v.sum()) for v in mask.values()) / sum(v.numel() for v in mask.values())
    assert 0.45 <= frac <= 0.55 and logs[-1]["mask_fraction"] == pytest.approx(frac)
    moved = False
    for n, w in before.items():
        if n in mask:
            assert torch.equal(w[~mask[n]], after[n][~mask[n]]), n
            moved |= not torch.equal(w, after[n])
        else:
            assert torch.equal(w, after[n])
    assert moved


def test_conceptprune_zeroes_only_the_ffn_neurons_it_selected(tiny_run_config, tiny_model_dir):
    out = run(tiny_run_config, "conceptprune", {"early_steps": 2, "prompts": 2, "top_k": 0.05}, steps=1)
    before, after = unet_state(tiny_model_dir), unet_state(out)
    masks = load_file(out / "masks.safetensors")
    diff = changed(before, after)
    assert diff and all(n.endswith("ff.net.2.weight") for n in diff)
    total = 0
    for n in [k for k in before if k.endswith("ff.net.2.weight")]:
        sel = masks[f"{n}.indices"][masks[f"{n}.offsets"][0]:masks[f"{n}.offsets"][1]].long()
        keep = torch.ones(before[n].shape[1], dtype=torch.bool)
        keep[sel] = False
        assert (after[n][:, sel] == 0).all(), n
        assert torch.equal(after[n][:, keep], before[n][:, keep]), n
        assert len(sel) >= 2  # 2 early steps, min_per_layer 1 ... top 5% of 64 = 3 per step
        total += len(sel)
    assert total > 0


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
@pytest.mark.parametrize("method,args,says", [
    ("esd-x", {"xt": "dream"}, "unknown xt source"),
    ("esd-u", {"ddim_steps": 0}, "ddim_steps"),
    ("salun", {"threshold": 0.0}, "threshold must be"),
    ("conceptprune", {"top_k": 2.0}, "top_k must be"),
    ("uce", {"projections": "q"}, "projections must be"),
    ("uce", {"no_such_option": 1}, "unknown uce option"),
])
def test_bad_method_options_give_one_clear_error(tiny_run_config, method, args, says):
    cfg = tiny_run_config(method=method)
    cfg.method_args = args
    with pytest.raises(UserError, match=says):
        run_unlearn(cfg)
