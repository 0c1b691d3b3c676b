"""Fast TRUST: the stopping rule, the per-step profile and the mask's noise floor, on the tiny pipeline."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trust_unlearn.stopping import StoppingRule
from trust_unlearn.unlearn import run_unlearn


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def _scripted_readings(monkeypatch, readings):
    """The rule reads `readings` in turn (the first is the original's) instead of generating probes."""
    queue = list(readings)
    monkeypatch.setattr(StoppingRule, "read", lambda self: dict(queue.pop(0)))


def test_run_stops_after_patience_probes_in_a_row_read_forgotten_with_retain_intact(tiny_run_config, monkeypatch):
    gone = {"present": 0.0, "retain_alignment": 0.499}
    _scripted_readings(monkeypatch, [
        {"present": 1.0, "retain_alignment": 0.5},  # the original
        gone,  # step 2: gone, but a single reading does not stop the run
        {"present": 0.5, "retain_alignment": 0.5},  # step 4: back -- the streak starts over
        {"present": 0.0, "retain_alignment": 0.4},  # step 6: gone, but retain drifted 20 %
        gone,  # step 8: first of a streak
        gone,  # step 10: second in a row -> stop (stop_patience 2, the default)
    ])
    cfg = tiny_run_config(common=dict(steps=12, probe_every=2))
    summary = run_unlearn(cfg)
    assert summary["stopped_at"] == 10 and summary["steps"] == 10 and summary["max_steps"] == 12
    rows = _log(cfg.out)
    assert [r["step"] for r in rows if "probe" in r] == [1, 3, 5, 7, 9]
    assert [r["probe"]["forgotten"] for r in rows if "probe" in r] == [True, False, False, True, True]
    assert [r.get("stopped") for r in rows if "probe" in r] == [False, False, False, False, True]
    assert rows[5]["probe"]["retain_drift"] == pytest.approx(0.2)
    assert summary["probe_before"]["present"] == 1.0
    assert all(len(offsets) == 11 for offsets in _mask_offsets(cfg.out))  # 10 steps of masks saved

    # patience 1: the first forgotten reading ends the run
    _scripted_readings(monkeypatch, [{"present": 1.0, "retain_alignment": 0.5}, gone])
    cfg = tiny_run_config(common=dict(steps=12, probe_every=2, stop_patience=1), out=str(Path(cfg.out).with_name("eager")))
    assert run_unlearn(cfg)["stopped_at"] == 2


def test_with_a_world_vocabulary_retain_is_read_zero_shot_not_by_alignment(tiny_run_config, monkeypatch):
    """Retain is intact while at most stop_retain_drop fewer retain probes read as their own caption; the alignment
    drift, logged beside it, then decides nothing."""
    own = lambda k: {"retain_margins": [0.1] * k + [-0.1] * (16 - k)}  # noqa: E731  k of 16 read as their caption
    _scripted_readings(monkeypatch, [
        {"present": 1.0, "retain_alignment": 0.5, **own(16)},  # the original
        {"present": 0.0, "retain_alignment": 0.5, **own(14)},  # gone, but two retain probes fewer read right
        {"present": 0.0, "retain_alignment": 0.4, **own(15)},  # one fewer (the default bound), alignment -20 %: stop
    ])
    cfg = tiny_run_config(common=dict(steps=8, probe_every=2, stop_patience=1))
    summary = run_unlearn(cfg)
    assert [p["forgotten"] for p in summary["probes"]] == [False, True]
    assert [p["retain_read"] for p in summary["probes"]] == [14 / 16, 15 / 16] and summary["stopped_at"] == 4


def _mask_offsets(out):
    tensors = load_file(Path(out) / "masks.safetensors")
    return [v for k, v in tensors.items() if k.endswith(".offsets")]


def test_no_stop_runs_every_step_and_an_unreadable_concept_never_stops(tiny_run_config, monkeypatch):
    forgotten = {"present": 0.0, "retain_alignment": 0.5}
    _scripted_readings(monkeypatch, [{"present": 1.0, "retain_alignment": 0.5}] + [forgotten] * 3)
    cfg = tiny_run_config(common=dict(steps=6, probe_every=2, stop=False))
    summary = run_unlearn(cfg)
    assert summary["steps"] == 6 and summary["stopped_at"] is None
    assert all(p["forgotten"] for p in summary["probes"])  # read as forgotten, but told not to stop

    # the scorer reads the concept in only a quarter of the original's images: it cannot steer
    _scripted_readings(monkeypatch, [{"present": 0.25, "retain_alignment": 0.5}] + [forgotten] * 3)
    cfg = tiny_run_config(common=dict(steps=6, probe_every=2), out=str(Path(cfg.out).with_name("unreadable")))
    summary = run_unlearn(cfg)
    assert summary["steps"] == 6 and summary["stopped_at"] is None
    assert not any(p["forgotten"] for p in summary["probes"])


def test_probe_reads_real_images_deterministically_with_training_seeds(tiny_run_config, monkeypatch):
    """A probe generates with the current model from training-range seeds; same weights, same reading."""
    from trust_unlearn.evaluation.protocol import TRAIN_SEEDS
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.concept_spec import ConceptSpec
    from trust_unlearn.evaluation.scorers import load_scorer
    from trust_unlearn.pipeline import load_model

    cfg = tiny_run_config()
    model = load_model(cfg.model)
    spec = ConceptSpec("x", [cfg.concept], [cfg.anchor], cfg.retain).validate()
    ctx = RunContext(model, spec, CommonConfig(seed=2, probes=3, probe_steps=2))
    ctx.scorer = load_scorer(cfg.scorer, False)
    rule = StoppingRule(ctx)
    assert all(TRAIN_SEEDS[0] <= s < TRAIN_SEEDS[1] for s in rule.seeds) and len(rule.seeds) == 6
    first = rule.calibrate()
    assert 0.0 <= first["present"] <= 1.0 and set(first) == {"present", "margins", "contrast_margins", "retain_alignment"}
    assert first["present"] == sum(m > 0 for m in first["margins"]) / 3
    assert first["contrast_margins"] == first["margins"]  # no world concept: the anchor is the only contrast
    # a margin above every probe's anchor preference reads each of them present
    ctx.common.stop_margin = 1 + max(-m for m in first["margins"])
    assert rule.read()["present"] == 1.0
    ctx.common.stop_margin = 0.0
    again = rule.probe()
    assert again["present"] == first["present"] and again["retain_drift"] == pytest.approx(0.0, abs=1e-6)


def test_contrasts_swap_the_concepts_attribute_words_for_every_other_value():
    """A forgotten concept need not become its anchor (an unlearned circle is often drawn as a square): it reads gone
    only when the scorer prefers some other value of its attributes."""
    from trust_unlearn.stopping import contrasts, retain_contrasts
    from trust_unlearn.world.shapes import COLOURS, SHAPES

    assert contrasts("a red circle", "a red triangle", "circle") == ["a red square", "a red triangle", "a red cross"]
    both = contrasts("a photo of a red circle on a plain background", "a photo of a blue circle on a plain background",
                     "red circle")
    assert len(both) == 15 and "a photo of a blue square on a plain background" in both
    assert "a photo of a red circle on a plain background" not in both
    assert contrasts("a red circle on a striped background", "a red triangle on a striped background",
                     "circle on striped background")[0] == "a red circle on a plain background"
    assert contrasts("nudity", "a person wearing clothes", None) == ["a person wearing clothes"]
    # a retain probe reads intact when the scorer prefers its own caption to every other scene's
    rivals = retain_contrasts("a green square on a plain background", "circle")
    assert len(rivals) == 4 * 4 * 2 - 1 and "a red circle on a striped background" in rivals
    short = retain_contrasts("a green square", "circle")  # only the attributes a caption names are swapped
    assert sorted(short) == sorted(f"a {c} {s}" for c in COLOURS for s in SHAPES if (c, s) != ("green", "square"))
    assert retain_contrasts("a green square on a plain background", None) == []


def test_log_profiles_every_step_and_the_noise_floor_leaves_the_run_unchanged(tiny_run_config):
    plain = tiny_run_config(method_args=dict(reg="csr"))
    run_unlearn(plain)
    floored = tiny_run_config(method_args=dict(reg="csr", noise_floor_every=1), out=str(Path(plain.out).with_name("floor")))
    summary = run_unlearn(floored)
    rows = _log(floored.out)
    for row in rows:
        phases = row["phases"]
        assert {"saliency_trajectory", "saliency_decode_score", "saliency_backward", "loss_forward", "reg_forward",
                "backward", "reg_backward", "update", "noise_floor", "other"} <= set(phases)
        assert sum(phases.values()) == pytest.approx(row["seconds"], rel=1e-6)
        assert 0.0 <= row["jaccard_floor"] <= 1.0
    assert set(summary["phase_seconds"]) >= {"saliency_trajectory", "reg_backward"}
    assert summary["mask_jaccard_floor"] is not None
    # the independent estimate draws from its own RNG stream: the run itself is bit-identical
    a = load_file(Path(plain.out) / "delta.safetensors")
    b = load_file(Path(floored.out) / "delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _log(plain.out)] == [r["loss"] for r in rows]


def test_probes_leave_the_training_unchanged(tmp_path):
    """Probes generate from their own seeds, and the testbed scorer's text features (which depend on the batch
    a text is first embedded in) are computed in the probes' batches whether or not a run probes: a run that
    never probes trains the same weights, bit for bit (why trust-robust, which never stops, skips them)."""
    from conftest import testbed_unlearn_config

    def run(name, **common):
        summary = run_unlearn(testbed_unlearn_config(tmp_path / name, common=common))
        return summary, load_file(tmp_path / name / "delta.safetensors")

    probed, a = run("probed", probe_every=2, stop=False)
    unprobed, b = run("unprobed", probe_every=0)
    assert len(probed["probes"]) == 2 and unprobed["probes"] == []
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_stopping_options_give_one_clear_error(tiny_run_config):
    from trust_unlearn.errors import UserError

    with pytest.raises(UserError, match="probe_every"):
        run_unlearn(tiny_run_config(common=dict(probe_every=-1)))
    with pytest.raises(UserError, match="stop_patience"):
        run_unlearn(tiny_run_config(common=dict(stop_patience=0)))
    with pytest.raises(UserError, match="stop_margin"):
        run_unlearn(tiny_run_config(common=dict(stop_margin=-0.1)))
    with pytest.raises(UserError, match="noise_floor_every"):
        run_unlearn(tiny_run_config(method_args=dict(noise_floor_every=-2)))


def test_stopping_flags_reach_the_run_config_and_testbed_trust_uses_the_dev_tuned_rule():
    from trust_unlearn.cli import build_parser, unlearn_config_from_args
    from trust_unlearn.methods import tuned_settings

    args = build_parser().parse_args(["unlearn", "--concept", "circle", "--stop-patience", "3", "--stop-forget", "0.1"])
    common = unlearn_config_from_args(args).common
    assert common["stop_patience"] == 3 and common["stop_forget"] == 0.1
    for method, method_args in (("trust", {}), ("trust", {"reg": "csr"})):
        tuned = tuned_settings(method, method_args, testbed=True)["common"]
        assert (tuned["stop_patience"], tuned["stop_forget"]) == (1, 0.13)
    # robust TRUST runs every step: the rule reads plain prompts only, and robustness keeps growing after them
    for testbed in (True, False):
        assert tuned_settings("trust-robust", {}, testbed=testbed)["common"]["stop"] is False
    for flag, stop in (("--stop", True), ("--no-stop", False)):
        args = build_parser().parse_args(["unlearn", "--concept", "circle", "--robust", flag])
        assert unlearn_config_from_args(args).common["stop"] is stop
    assert "stop_patience" not in tuned_settings("trust", {}, testbed=False)["common"]  # SD: the conservative default
