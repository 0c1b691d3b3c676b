"""TRUST engine correctness on tiny random SD-shaped pipelines (CPU, seconds each)."""
import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trust_unlearn.errors import UserError
from trust_unlearn.methods.trust import cip_penalty, csr_penalty
from trust_unlearn.neurons import concept_neuron_masks, contrastive_neuron_masks, zscore_mask
from trust_unlearn.unlearn import run_unlearn


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def history(out: Path) -> dict[str, list[set[int]]]:
    t = load_file(out / "masks.safetensors")
    names = {k.rsplit(".", 1)[0] for k in t}
    out = {}
    for n in names:
        idx, off = t[f"{n}.indices"], t[f"{n}.offsets"]
        out[n] = [set(idx[off[i] : off[i + 1]].tolist()) for i in range(len(off) - 1)]
    return out


def unet_state(folder):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()


# ------------------------------------------------------------------ pure pieces
def test_zscore_selection_on_hand_made_saliency():
    s = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0])
    # mean 1.9, std 2.846 -> z(10) = 2.846 > 2, z(1) < 0
    assert zscore_mask(s, 2.0).tolist() == [False] * 9 + [True]
    assert not zscore_mask(s, 3.0).any()
    assert not zscore_mask(torch.ones(5), 0.0).any()  # no spread: nothing stands out
    grads = {"w": torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.1, 0.1]])}
    assert concept_neuron_masks(grads, 1.5)["w"].tolist() == [True, False, False, False, False, False]


def test_contrast_drops_rows_the_retain_prompts_need_as_much():
    # rows 0 and 1 stand out for the target; row 0 stands out as much for the retain prompts (a "red in
    # general" row), row 1 only for the target (a "red circle" row). Scales differ 100x between the two.
    target = {"w": torch.tensor([[9.0], [9.0]] + [[1.0]] * 8)}
    retain = {"w": torch.tensor([[900.0], [100.0]] + [[100.0]] * 8)}
    assert concept_neuron_masks(target, 0.5)["w"][:2].tolist() == [True, True]
    mask = contrastive_neuron_masks(target, retain, 1.0, 0.5)["w"]
    assert mask.tolist() == [False, True] + [False] * 8
    assert torch.equal(contrastive_neuron_masks(target, retain, 0.0, 0.5)["w"], concept_neuron_masks(target, 0.5)["w"])


def test_cip_gradient_equals_closed_form():
    torch.manual_seed(0)
    w = torch.randn(6, 4, requires_grad=True)
    g = torch.randn(6, 4)
    mask = {"w": torch.tensor([True, False, True, False, False, True])}
    cip_penalty({"w": w}, {"w": g}, mask).backward()
    expected = torch.sign(w.detach() * g) * g * mask["w"].unsqueeze(1)
    assert torch.allclose(w.grad, expected)


def test_csr_equals_explicit_jacobian_on_a_toy_module():
    torch.manual_seed(0)
    lin1, lin2 = torch.nn.Linear(3, 5), torch.nn.Linear(5, 4)
    x = torch.randn(2, 3)
    params = {"lin1.weight": lin1.weight, "lin2.weight": lin2.weight}
    mask = {"lin1.weight": torch.tensor([True, False, True, True, False]), "lin2.weight": torch.tensor([False, True, True, False])}
    f = lambda: lin2(torch.tanh(lin1(x)))  # noqa: E731
    gen = torch.Generator().manual_seed(5)
    value = csr_penalty(f, params, mask, gen)
    v = torch.randint(0, 2, (2, 4), generator=torch.Generator().manual_seed(5)).float() * 2 - 1
    # explicit: J = d out / d theta (full Jacobian), grad of v.out / batch = J^T v / batch
    expected = 0.0
    for name, p in params.items():
        jac = torch.autograd.functional.jacobian(lambda w: _toy_out(lin1, lin2, x, name, w), p.detach())
        jtv = torch.einsum("bo,bo...->...", v, jac) / 2
        expected = expected + (jtv * mask[name].unsqueeze(1)).pow(2).sum()
    assert torch.allclose(value, expected, atol=1e-5)
    value.backward()  # differentiable (double backward ran)
    assert lin1.weight.grad is not None


def _toy_out(lin1, lin2, x, name, w):
    if name == "lin1.weight":
        return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(x, w, lin1.bias)), lin2.weight, lin2.bias)
    return torch.nn.functional.linear(torch.tanh(lin1(x)), w, lin2.bias)


# ------------------------------------------------------------------ runs
def test_only_masked_rows_change_and_masks_are_dynamic(tiny_run_config, tiny_model_dir):
    cfg = tiny_run_config()
    digest = folder_digest(tiny_model_dir)
    run_unlearn(cfg)
    out = Path(cfg.out)
    assert folder_digest(tiny_model_dir) == digest  # input untouched
    before, after = unet_state(tiny_model_dir), unet_state(out)
    masks = history(out)
    assert len(next(iter(masks.values()))) == 4
    changed_somewhere = False
    for name, t in before.items():
        if name in masks:
            ever = set().union(*masks[name])
            untouched = [r for r in range(t.shape[0]) if r not in ever]
            assert torch.equal(t[untouched], after[name][untouched]), name
            changed_somewhere |= not torch.equal(t, after[name])
        else:
            assert torch.equal(t, after[name]), f"{name} is outside q/k/v of attn2 yet changed"
    assert changed_somewhere
    # dynamic: the selected neurons are re-estimated and differ across steps
    assert any(len({frozenset(s) for s in steps}) > 1 for steps in masks.values())
    for f in ("model_index.json", "delta.safetensors", "config.yaml", "log.jsonl", "report/before_after.png", "report/curves.png"):
        assert (out / f).exists(), f


def test_static_mask_is_constant(tiny_run_config):
    cfg = tiny_run_config(method_args={"mask_every": 0})
    run_unlearn(cfg)
    for steps in history(Path(cfg.out)).values():
        assert all(s == steps[0] for s in steps)


def test_csr_run_and_save_load_generate_roundtrip(tiny_run_config):
    from diffusers import DiffusionPipeline

    cfg = tiny_run_config(method_args={"reg": "csr"}, common={"steps": 2})
    run_unlearn(cfg)
    pipe = DiffusionPipeline.from_pretrained(cfg.out)
    images = pipe("a red circle", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_delta_plus_base_equals_unlearned(tiny_run_config, tiny_model_dir, tmp_path):
    from trust_unlearn.cli import main

    cfg = tiny_run_config(common={"steps": 2})
    run_unlearn(cfg)
    rebuilt = tmp_path / "rebuilt"
    assert main(["apply-delta", "--base", str(tiny_model_dir), "--delta", f"{cfg.out}/delta.safetensors", "--out", str(rebuilt)]) == 0
    a, b = unet_state(cfg.out), unet_state(rebuilt)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(load_file(Path(cfg.out) / "delta.safetensors")) > 0


def test_resume_gives_the_same_weights(tiny_run_config, tmp_path):
    full = tiny_run_config(out=str(tmp_path / "full"))
    run_unlearn(full)

    class Crash(Exception):
        pass

    def crash_after_two(k):
        if k == 2:
            raise Crash()

    part = tiny_run_config(out=str(tmp_path / "part"))
    with pytest.raises(Crash):
        run_unlearn(part, on_step=crash_after_two)
    assert not (tmp_path / "part").exists() and (tmp_path / ".part.partial" / "checkpoint.pt").exists()
    run_unlearn(part, resume=True)
    a, b = unet_state(tmp_path / "full"), unet_state(tmp_path / "part")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert len((tmp_path / "part" / "log.jsonl").read_text().splitlines()) == 4


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("overrides,says", [
    ({"concept": "  "}, "empty concept"),
    ({"anchor": "a red circle"}, "anchor equals target"),
    ({"method_args": {"xi": 50.0}}, "selects no concept neuron"),
    ({"method_args": {"reg": "l2"}}, "unknown regulariser"),
    ({"method_args": {"contrast": -1.0}}, "contrast must be >= 0"),
    ({"method": "magic"}, "unknown method"),
])
def test_bad_inputs_give_one_clear_error(tiny_run_config, tiny_model_dir, overrides, says):
    digest = folder_digest(tiny_model_dir)
    with pytest.raises(UserError, match=says):
        run_unlearn(tiny_run_config(**overrides))
    assert folder_digest(tiny_model_dir) == digest


def test_nan_loss_is_reported(tiny_run_config, monkeypatch):
    from trust_unlearn.methods.base import RunContext

    monkeypatch.setattr(RunContext, "preservation_loss", lambda self, *args: (torch.tensor(float("nan")), torch.tensor(0.0)))
    with pytest.raises(UserError, match="loss became nan"):
        run_unlearn(tiny_run_config())


def test_unet_without_cross_attention_is_refused(tiny_run_config, tmp_path):
    from conftest import build_tiny_pipeline

    folder = tmp_path / "no-xattn"
    build_tiny_pipeline(cross_attention=False).save_pretrained(folder)
    with pytest.raises(UserError, match="no text cross-attention"):
        run_unlearn(tiny_run_config(model=str(folder)))


def test_out_inside_the_model_is_refused(tiny_run_config, tiny_model_dir):
    with pytest.raises(UserError, match="overlaps the input model"):
        run_unlearn(tiny_run_config(out=str(tiny_model_dir / "result")))


def test_guided_objective_is_relative_cfg_distance(tiny_model_dir):
    """L_prev's "guided" form: zero at the original weights; after a change it equals
    ||guided(c) - guided0(c')||^2 / ||w (eps0(c') - eps0(""))||^2 per sample, averaged."""
    from torch.func import functional_call

    from trust_unlearn.concept_spec import resolve_spec
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.pipeline import load_model

    model = load_model(str(tiny_model_dir))
    spec = resolve_spec("a red circle", "a blue square", ["a green cross"], None, False)
    ctx = RunContext(model, spec, CommonConfig())
    unet = model.pipe.unet
    ctx.freeze_original(dict(unet.named_parameters()))
    z_t, t = torch.randn(3, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 500, 990])
    cond, ref = ctx.text(["a red circle"] * 3), ctx.text(["a blue square"] * 3)
    assert ctx._moved(z_t, t, cond, cond, "guided").item() == 0.0
    with torch.no_grad():
        next(m for n, m in unet.named_modules() if n.endswith("attn2.to_k")).weight.mul_(1.5)

    def guided(c, params=None):
        run = (lambda x, tt, s: unet(x, tt, encoder_hidden_states=s).sample) if params is None else (
            lambda x, tt, s: functional_call(unet, params, (x, tt), {"encoder_hidden_states": s}).sample)
        u, e = run(z_t, t, ctx.uncond.expand(3, -1, -1)), run(z_t, t, c)
        return u + ctx.guidance * (e - u), ctx.guidance * (e - u)

    with torch.no_grad():
        now, _ = guided(cond)
        then, direction = guided(ref, ctx.original)
        expected = ((now - then).pow(2).mean((1, 2, 3)) / direction.pow(2).mean((1, 2, 3))).mean()
        got = ctx._moved(z_t, t, cond, ref, "guided")
    assert torch.allclose(got, expected, rtol=1e-4) and got > 0
    assert ctx._moved(z_t, t, cond, ref, "conditional") > 0
