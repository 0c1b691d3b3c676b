"""`trust bench`: planning, bad inputs, an end-to-end run on a tiny testbed-shaped pipeline (judge faked),
and report rendering on a tiny result set."""
import json
from pathlib import Path

import pytest

from trust_unlearn.bench import runner
from trust_unlearn.bench.runner import BenchConfig, expand_methods, parse_method_label, parse_sweep, plan, run_bench
from trust_unlearn.errors import UserError


# ------------------------------------------------------------------ parsing
def test_method_labels_groups_and_sweep():
    assert parse_method_label("trust:xi=1.5,beta=0.1") == ("trust", {"xi": 1.5, "beta": 0.1})
    assert parse_method_label("uce") == ("uce", {})
    assert parse_sweep(["xi=1.5,2", "beta=0.1,1"]) == {"xi": [1.5, 2], "beta": [0.1, 1]}
    labels = expand_methods(["baselines", "trust"], {"xi": [1.5, 2], "beta": [1]})
    assert labels[:5] == ["esd-x", "esd-u", "salun", "conceptprune", "uce"]
    assert labels[-2:] == ["trust:beta=1,xi=1.5", "trust:beta=1,xi=2"]
    assert "trust" in labels
    name, common, args = runner.run_settings("esd-x:lr=0.001,negative_guidance=2", BenchConfig(), 7)
    assert (name, common["lr"], common["steps"], args) == ("esd-x", 0.001, 7, {"negative_guidance": 2})
    assert runner.run_settings("uce", BenchConfig(), 7)[1]["steps"] == 1  # training-free: one step


@pytest.mark.parametrize("cfg,says", [
    (BenchConfig(methods=["magic"]), "unknown method 'magic'"),
    (BenchConfig(tasks=["hexagon"]), "unknown concept word 'hexagon'"),
    (BenchConfig(tasks=[]), "no task"),
    (BenchConfig(methods=[]), "no method"),
    (BenchConfig(attacks=["laser"]), "unknown attack 'laser'"),
    (BenchConfig(methods=["salun:threshold=0"]), "threshold must be"),
    (BenchConfig(methods=["uce:bogus=1"]), "unknown uce:bogus=1 option"),
    (BenchConfig(steps=0), "--steps must be at least 1"),
])
def test_bad_bench_inputs_fail_before_anything_runs(cfg, says):
    with pytest.raises(UserError, match=says):
        plan(cfg)


def test_bad_sweep_and_label_syntax():
    with pytest.raises(UserError, match="KEY=V1,V2"):
        parse_sweep(["xi"])
    with pytest.raises(UserError, match="NAME:KEY=VALUE"):
        parse_method_label("trust:xi")


def test_cli_bad_input_is_one_clear_error(capsys, tmp_path):
    from trust_unlearn.cli import main

    assert main(["bench", "--methods", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["bench", "--report-only", "--out", str(tmp_path / "missing")]) == 2
    assert "no bench.json" in capsys.readouterr().err


# ------------------------------------------------------------------ end to end on a tiny testbed-shaped model
@pytest.fixture
def tiny_testbed_dir(tmp_path):
    from conftest import build_tiny_pipeline

    folder = tmp_path / "tiny-testbed"
    build_tiny_pipeline().save_pretrained(folder)
    (folder / "testbed.json").write_text(json.dumps({"resolution": 16, "guidance_scale": 2.0, "num_inference_steps": 2,
                                                     "tokenizer_max_length": 8}))
    return folder


def fake_evaluate(model, concept, ecfg, reference):
    """Stands in for the judge (the testbed judge weights are not part of unit tests): numbers from the weights."""
    import torch

    w = sum(float(p.double().abs().sum()) for p in model.pipe.unet.parameters())
    ref = sum(float(p.double().abs().sum()) for p in reference.pipe.unet.parameters())
    moved = min(1.0, abs(w - ref) / max(1e-9, ref) * 1e3)
    torch.manual_seed(0)
    return {"forget_rate": 1.0 - moved, "retain_accuracy": 0.9, "fd_judge": moved, "alignment": 0.5 - moved / 2,
            "lookalike_retain_accuracy": None}


def test_bench_end_to_end_on_a_tiny_model(tiny_testbed_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_evaluate", fake_evaluate)
    cfg = BenchConfig(model=str(tiny_testbed_dir), methods=["uce", "esd-x", "trust-noise-saliency"], tasks=["circle"],
                      attacks=[], steps=3, checkpoints=1, out=str(tmp_path / "bench"), isolate=False,
                      common={"cache_images": 2, "cache_steps": 2, "batch": 2},
                      overrides={"trust-noise-saliency": {"method_args": {"xi": 1.0, "saliency_batch": 1}},
                                 "esd-x": {"method_args": {"ddim_steps": 2}}})
    logs = []
    results = run_bench(cfg, log=logs.append)
    out = tmp_path / "bench"
    for f in ("bench.yaml", "bench.json", "results.csv", "report.html", "tasks/circle/before.json"):
        assert (out / f).exists(), f
    methods = results["tasks"]["circle"]["methods"]
    assert list(methods) == ["uce", "esd-x", "trust-noise-saliency"]
    assert methods["uce"]["steps"] == 1 and methods["esd-x"]["steps"] == 3
    assert len(methods["esd-x"]["curve"]) == 2  # one checkpoint + the end
    assert methods["trust-noise-saliency"]["mask_unit"] == "neurons"
    for r in methods.values():
        assert r["wall_clock_s"] > 0 and r["peak_rss_mb"] > 0
        assert (out / r["run_dir"] / "config.yaml").exists()  # the run re-runs from its folder
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 1 + 3  # header, original, methods
    # the saved config re-runs the bench; finished results are reused
    again = run_bench(BenchConfig.from_yaml(out / "bench.yaml"), log=logs.append)
    assert any("reusing" in line for line in logs)
    assert again["tasks"]["circle"]["methods"]["uce"]["forget_rate"] == methods["uce"]["forget_rate"]


def test_attack_curve_attacks_a_copy_at_every_checkpoint(tiny_testbed_dir, tmp_path, monkeypatch):
    import trust_unlearn.attacks as attacks

    monkeypatch.setattr(runner, "_evaluate", fake_evaluate)
    attacked = []

    def fake_suite(model, original, concept, names, **kw):
        attacked.append((model, kw["out"].name))
        return {n: {"asr": 0.5, "seconds": 0.1, "pre_attack_asr": 0.0} for n in names}

    monkeypatch.setattr(attacks, "run_attack_suite", fake_suite)
    cfg = BenchConfig(model=str(tiny_testbed_dir), methods=["esd-x"], tasks=["circle"], attacks=["p4d"], steps=3,
                      checkpoints=2, attack_curve=True, out=str(tmp_path / "bench"), isolate=False,
                      common={"cache_images": 2, "cache_steps": 2, "batch": 2},
                      overrides={"esd-x": {"method_args": {"ddim_steps": 2}}})
    curve = run_bench(cfg, log=lambda *_: None)["tasks"]["circle"]["methods"]["esd-x"]["curve"]
    assert [name for _, name in attacked] == ["attacks-step1", "attacks-step2", "attacks"]
    assert [c["asr"] for c in curve] == [{"p4d": 0.5}] * 3
    final_model = attacked[-1][0]
    assert all(m is not final_model and m.pipe.unet is not final_model.pipe.unet for m, _ in attacked[:-1])


def test_bench_refuses_a_model_the_judge_cannot_grade(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="runs on the testbed"):
        run_bench(BenchConfig(model=str(tiny_model_dir), methods=["uce"], tasks=["circle"], attacks=[], out=str(tmp_path / "b")))


# ------------------------------------------------------------------ report on a tiny result set
def tiny_results(tmp_path: Path) -> dict:
    log = tmp_path / "tasks" / "circle" / "trust" / "run"
    log.mkdir(parents=True)
    rows = [{"step": k, "loss": 1.0 / (k + 1), "mask_size": 5 + k, "jaccard_prev": 0.5, "jaccard_first": 1.0 / (k + 1),
             "mask_layers": {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q.weight": k,
                             "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": 5}} for k in range(4)]
    (log / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    method = {"label": "trust", "method": "trust", "task": "circle", "steps": 4, "forget_rate": 0.02,
              "retain_accuracy": 0.9, "lookalike_retain_accuracy": None, "fd_judge": 0.1, "alignment": 0.2,
              "wall_clock_s": 12.0, "seconds_per_step": 3.0, "peak_rss_mb": 800.0, "time_to_target_s": 6.0,
              "curve": [{"step": 2, "train_s": 6.0, "forget_rate": 0.04, "retain_accuracy": 0.9, "alignment": 0.3,
                         "asr": {"p4d": 0.5}},
                        {"step": 4, "train_s": 12.0, "forget_rate": 0.02, "retain_accuracy": 0.9, "alignment": 0.2,
                         "asr": {"p4d": 0.25}}],
              "mask_size": 6.5, "mask_unit": "neurons", "mask_fraction": 0.01, "run_dir": "tasks/circle/trust/run",
              "asr": {"p4d": 0.25}, "attack_seconds": {"p4d": 3.0}, "pre_attack_asr": 0.0, "common": {}, "method_args": {}}
    uce = {**method, "label": "uce", "method": "uce", "forget_rate": 0.5, "time_to_target_s": None, "asr": {"p4d": 0.75},
           "mask_size": 1000, "mask_unit": "weights", "run_dir": "tasks/circle/uce/run", "curve": method["curve"][-1:]}
    return {"config": {}, "plan": {"labels": ["trust", "uce"], "tasks": ["circle"], "attacks": ["p4d"], "steps": 4,
                                   "checkpoints": 1, "eval": {}},
            "machine": {"cpus": 2}, "started": "then", "finished": "now", "total_seconds": 30.0,
            "tasks": {"circle": {"before": {"forget_rate": 0.95, "retain_accuracy": 0.92, "fd_judge": 0.0,
                                            "alignment": 0.6, "lookalike_retain_accuracy": None},
                                 "methods": {"trust": method, "uce": uce}}}}


def test_report_renders_a_tiny_result_set(tmp_path, capsys):
    from trust_unlearn.bench.cli import print_tables
    from trust_unlearn.bench.runner import write_results

    results = tiny_results(tmp_path)
    write_results(results, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert page.count("<h2>") == 1 and "<table>" in page
    assert page.count("data:image/png;base64,") >= 3  # scatter, curves, mask figure
    assert "never" in page and "6.0 s" in page
    print_tables(results)
    text = capsys.readouterr().out
    assert "ASR p4d" in text and "75.0%" in text and "original" in text
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].endswith("asr_p4d") and len(lines) == 4
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == "### circle" and md[2].startswith("| method | forget | ASR p4d |") and len(md) == 2 + 2 + 3


def test_report_only_rebuilds_from_bench_json(tmp_path):
    from trust_unlearn.bench.runner import write_json
    from trust_unlearn.cli import main

    write_json(tmp_path / "bench.json", tiny_results(tmp_path))
    assert main(["bench", "--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").exists()


def test_an_isolated_run_that_fails_names_the_method_and_task(tiny_model_dir, tmp_path):
    from trust_unlearn.bench.runner import run_isolated

    cfg = BenchConfig(model=str(tiny_model_dir), methods=["uce"], tasks=["circle"], attacks=[], out=str(tmp_path))
    with pytest.raises(UserError, match="uce on 'circle' failed"):
        run_isolated("uce", "circle", cfg, {"retain_accuracy": 1.0}, tmp_path / "tasks" / "circle" / "uce")
