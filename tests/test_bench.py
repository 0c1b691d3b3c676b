"""`trust bench`: labels and tuned settings, bad inputs, a resumable end-to-end run on a tiny testbed-shaped
pipeline (judge faked, cells in-process), the report's aggregation, and the tuning grid's selection rule."""
import json

import pytest

from trust_unlearn.bench import cells as cells_mod
from trust_unlearn.bench.cells import attack_hash
from trust_unlearn.bench import runner
from trust_unlearn.bench.report import headline, summarise, task_tables, update_readme, write_outputs
from trust_unlearn.bench.runner import BenchConfig, expand_methods, parse_method_label, parse_sweep, plan, resolve_settings, run_bench
from trust_unlearn.bench.tuning import grid_jobs, grid_label, grid_points, grid_report, grid_runs, select, tuning_config
from trust_unlearn.errors import UserError


# ------------------------------------------------------------------ labels and settings
def test_method_labels_groups_and_sweep():
    assert parse_method_label("trust:xi=1.5,beta=0.1") == ("trust", {"xi": 1.5, "beta": 0.1})
    assert parse_method_label("esd-x:lr=1e-05") == ("esd-x", {"lr": 1e-5})  # YAML 1.1 would read a string
    assert parse_sweep(["xi=1.5,2", "beta=0.1,1"]) == {"xi": [1.5, 2], "beta": [0.1, 1]}
    labels = expand_methods(["baselines", "trust"], {"xi": [1.5, 2], "beta": [1]})
    assert labels[:6] == ["esd-x", "esd-u", "salun:alpha=2", "conceptprune", "uce", "advunlearn"]
    assert labels[-2:] == ["trust:beta=1,xi=1.5", "trust:beta=1,xi=2"]


def test_every_method_starts_from_its_own_tuned_settings_not_trusts():
    name, s = resolve_settings("esd-x", testbed=True)
    assert name == "esd-x" and s["common"]["lr"] != resolve_settings("trust", testbed=True)[1]["common"]["lr"]
    # a label's own options win over the tuned ones; the bench's common options sit in between
    assert resolve_settings("esd-x:lr=0.001", testbed=True, common={"lr": 0.5, "steps": 7})[1]["common"]["lr"] == 0.001
    assert resolve_settings("esd-x", testbed=True, common={"steps": 7})[1]["common"]["steps"] == 7
    assert resolve_settings("uce", testbed=True)[1]["common"]["steps"] == 1  # training-free: one step
    # on a real checkpoint: the published settings (ESD: lr 1e-5, 1000 iterations)
    assert resolve_settings("esd-x", testbed=False)[1]["common"] == {"lr": 1e-5, "steps": 1000, "batch": 1}
    # a CSR run finds TRUST's CSR entry; a TRUST variant falls back to TRUST's
    from trust_unlearn.methods import tuned_entry

    assert tuned_entry("trust", {"reg": "csr"}, True)[0] == "trust:reg=csr"
    assert tuned_entry("trust-static", {"reg": "cip"}, True)[0] == "trust"
    # a float option matches a key that writes it as an integer (method options are typed floats)
    from trust_unlearn.methods import _tuned
    _tuned()["testbed"]["salun:alpha=2"] = {"common": {"lr": 1e-5}}
    try:
        assert tuned_entry("salun", {"alpha": 2.0}, True)[0] == "salun:alpha=2"
        assert tuned_entry("salun", {"alpha": 0.1}, True)[0] == "salun"
    finally:
        del _tuned()["testbed"]["salun:alpha=2"]
    # method options: TRUST's testbed mask_every reaches trust-robust, not trust-static (which defines its own)
    from trust_unlearn.methods import tuned_settings

    assert tuned_settings("trust", {}, True)["method_args"]["mask_every"] == 2
    assert tuned_settings("trust-robust", {}, True)["method_args"]["mask_every"] == 2
    assert "mask_every" not in tuned_settings("trust-static", {}, True)["method_args"]
    assert resolve_settings("trust-static", testbed=True)[1]["method_args"] == {}


@pytest.mark.parametrize("cfg,says", [
    (BenchConfig(methods=["magic"]), "unknown method 'magic'"),
    (BenchConfig(tasks=["hexagon"]), "unknown concept word 'hexagon'"),
    (BenchConfig(tasks=[]), "no task"),
    (BenchConfig(methods=[]), "no method"),
    (BenchConfig(attacks=["laser"]), "unknown attack 'laser'"),
    (BenchConfig(methods=["salun:threshold=0"]), "threshold must be"),
    (BenchConfig(methods=["uce:bogus=1"]), "unknown uce:bogus=1 option"),
    (BenchConfig(methods=["esd-x"], common={"steps": 0}), "steps, batch and cache_images must be at least 1"),
    (BenchConfig(tasks=["circle", "square"]), "dev and test tasks"),
    (BenchConfig(seeds=0), "must be at least 1"),
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
    assert main(["bench", "--report-only", "--results", str(tmp_path / "missing.json")]) == 2
    assert "no results file" in capsys.readouterr().err


def test_plan_attacks_the_first_seed_and_puts_originals_first():
    jobs = plan(BenchConfig(methods=["esd-x", "uce"], tasks=["circle"], seeds=2, checkpoints=[25, 10**6]))
    assert [j["label"] for j in jobs] == ["original", "esd-x", "uce", "esd-x", "uce"]
    assert [bool(j["attacks"]) for j in jobs] == [True, True, True, False, False]
    assert jobs[1]["checkpoints"] == [25] and jobs[2]["checkpoints"] == []  # past the last step / training-free
    assert len({j["out"] for j in jobs}) == len(jobs)
    assert not any(j["confine_attacks"] for j in jobs)  # confined white-box attacks only when asked for
    from trust_unlearn.bench.cli import config_from_args
    from trust_unlearn.cli import build_parser

    cfg = config_from_args(build_parser().parse_args(["bench", "--tasks", "circle", "--confine-attacks"]))
    assert cfg.confine_attacks and all(j["confine_attacks"] for j in plan(cfg))


# ------------------------------------------------------------------ end to end on a tiny testbed-shaped model
@pytest.fixture
def tiny_testbed_dir(tmp_path):
    from conftest import build_tiny_pipeline

    folder = tmp_path / "tiny-testbed"
    build_tiny_pipeline().save_pretrained(folder)
    (folder / "testbed.json").write_text(json.dumps({"resolution": 16, "guidance_scale": 2.0, "num_inference_steps": 2,
                                                     "tokenizer_max_length": 8}))
    return folder


def fake_evaluate(model, concept, ecfg=None, reference=None):
    """Stands in for the judge (its weights are not part of unit tests): figures that move with the weights."""
    w = sum(float(p.detach().double().abs().sum()) for p in model.pipe.unet.parameters())
    ref = sum(float(p.detach().double().abs().sum()) for p in reference.pipe.unet.parameters())
    moved = min(1.0, abs(w - ref) / max(1e-9, ref) * 1e3)
    return {"forget_rate": 1.0 - moved, "forget_rate_geometric": 1.0 - moved, "unrecognised": moved / 2,
            "unrecognised_geometric": 0.0, "anchor_rate": 0.0, "retain_seen": 0.9, "retain_unseen": 0.9 - moved / 10,
            "lookalike_seen": None, "lookalike_unseen": None, "fd_judge": moved, "judge_disagreements": {"count": 0}}


def in_process(job, threads):
    return cells_mod.run_cell(job)


def test_bench_end_to_end_resumes_cell_by_cell(tiny_testbed_dir, tmp_path, monkeypatch):
    import trust_unlearn.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    monkeypatch.setattr(runner, "run_isolated", in_process)
    results = tmp_path / "results" / "bench.json"
    cfg = BenchConfig(model=str(tiny_testbed_dir), methods=["uce", "esd-x"], tasks=["circle"], seeds=2, attacks=[],
                      checkpoints=[2], out=str(tmp_path / "runs"), results=str(results), workers=1,
                      common={"steps": 3, "cache_images": 2, "cache_steps": 2, "batch": 2, "probe_every": 0},
                      overrides={"esd-x": {"method_args": {"ddim_steps": 2}}})
    logs = []
    summary = run_bench(cfg, log=logs.append)
    cells = json.loads(results.read_text())["cells"]
    assert sorted((c["method"], c["seed"]) for c in cells) == [("esd-x", 0), ("esd-x", 1), ("original", 0), ("uce", 0), ("uce", 1)]
    esd = next(c for c in cells if c["method"] == "esd-x" and c["seed"] == 0)
    for key in ("task", "commit", "source_hash", "forget", "forget_geometric", "unrecognised", "retain_seen",
                "retain_unseen", "retain_unseen_before", "lookalike_unseen", "lookalike_unseen_before", "train_seconds",
                "total_seconds", "time_to_target_seconds", "settings", "machine"):
        assert key in esd, key
    assert [p["step"] for p in esd["curve"]] == [2, 3] and esd["steps"] == 3
    assert esd["settings"]["common"]["lr"] == resolve_settings("esd-x", True)[1]["common"]["lr"]
    assert (tmp_path / "runs" / "circle" / "esd-x" / "seed0" / "run" / "config.yaml").exists()
    for f in ("results.md", "results.csv", "report.html", "summary.json"):
        assert (results.parent / f).exists(), f
    assert summary["tasks"]["circle"]["methods"]["esd-x"]["seeds"] == [0, 1]
    # resumed: nothing left to run, every cell kept
    logs.clear()
    run_bench(cfg, log=logs.append)
    assert any("0 of 5 cells to run" in line for line in logs)
    # settings changed -> the report flags the cells stale; --rerun-stale re-runs them
    cfg.common = {**cfg.common, "lr": 1e-3}
    again = run_bench(cfg, log=logs.append)
    assert again["tasks"]["circle"]["methods"]["esd-x"]["stale"] == [0, 1]
    cfg.rerun_stale = True
    assert run_bench(cfg, log=logs.append)["tasks"]["circle"]["methods"]["esd-x"]["stale"] == []


def test_an_attack_added_later_runs_alone_on_the_cell_trained_again(tiny_testbed_dir, tmp_path, monkeypatch):
    import trust_unlearn.evaluation.evaluate as ev

    ran = []

    def fake_attack(model, original, task, job, out):
        ran.append((job["label"], tuple(job["attacks"])))
        w = sum(float(p.detach().double().abs().sum()) for p in model.pipe.unet.parameters())
        return {"asr": {a: round(w % 1, 6) for a in job["attacks"]}, "asr_ci": {a: [0.0, 1.0] for a in job["attacks"]},
                "attack_prompts": {a: 2 for a in job["attacks"]}, "attack_seconds": {a: 1.0 for a in job["attacks"]},
                "pre_attack_asr": 0.5, "attack_hash": "h"}

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    monkeypatch.setattr(cells_mod, "_attack", fake_attack)
    monkeypatch.setattr(runner, "run_isolated", in_process)
    results = tmp_path / "bench.json"
    cfg = BenchConfig(model=str(tiny_testbed_dir), methods=["esd-x"], tasks=["circle"], seeds=1, attacks=["p4d"],
                      checkpoints=[2], out=str(tmp_path / "runs"), results=str(results), workers=1,
                      common={"steps": 3, "cache_images": 2, "cache_steps": 2, "batch": 2, "probe_every": 0},
                      overrides={"esd-x": {"method_args": {"ddim_steps": 2}}})
    run_bench(cfg, log=lambda *_: None)
    first = {c["method"]: c for c in json.loads(results.read_text())["cells"]}
    ran.clear()
    logs = []
    cfg.attacks = ["p4d", "paraphrase"]
    run_bench(cfg, log=logs.append)
    assert sorted(ran) == [("esd-x", ("paraphrase",)), ("original", ("paraphrase",))]  # only the missing attack
    assert any("2 run again only for the attacks they lack" in line for line in logs)
    cells = {c["method"]: c for c in json.loads(results.read_text())["cells"]}
    esd = cells["esd-x"]
    assert esd["asr"]["p4d"] == first["esd-x"]["asr"]["p4d"]  # the attack that ran before is kept
    assert esd["asr"]["paraphrase"] == esd["asr"]["p4d"]  # the same weights: the model trained again is the cell's
    assert esd["commit"] == first["esd-x"]["commit"] and esd["finished"] == first["esd-x"]["finished"]
    (topup,) = esd["attack_topups"]
    assert topup["attacks"] == ["paraphrase"] and topup["reproduced"] and topup["differences"] == {}
    # nothing is missing any more: nothing runs
    ran.clear()
    run_bench(cfg, log=lambda *_: None)
    assert ran == []


def test_a_topup_whose_model_differs_says_so():
    old = {"task": "circle", "method": "trust", "seed": 0, "forget": 0.1, "retain_unseen": 0.9, "pre_attack_asr": 0.25,
           "asr": {"p4d": 0.5}, "asr_ci": {"p4d": [0.3, 0.7]}, "attack_prompts": {"p4d": 16}, "attack_seconds": {"p4d": 9.0}}
    fresh = {**old, "forget": 0.125, "asr": {"paraphrase": 0.0}, "asr_ci": {"paraphrase": [0.0, 0.2]},
             "attack_prompts": {"paraphrase": 16}, "attack_seconds": {"paraphrase": 3.0}, "commit": "new",
             "attack_hash": "h", "finished": "now", "total_seconds": 60.0}
    cell = cells_mod.merge_topup(old, fresh)
    assert cell["asr"] == {"p4d": 0.5, "paraphrase": 0.0} and cell["forget"] == 0.1
    assert cell["attack_topups"][0]["differences"] == {"forget": [0.1, 0.125]}
    assert not cell["attack_topups"][0]["reproduced"]
    # the judge-feature distance of identical image sets is float noise, not a different model
    noise = cells_mod.merge_topup({**old, "fd_judge": 4e-08}, {**fresh, "forget": 0.1, "fd_judge": -1.4e-08})
    assert noise["attack_topups"][0]["reproduced"] and "fd_judge" in noise["attack_topups"][0]["differences"]
    kernels = cells_mod.merge_topup({**old, "fd_judge": 0.031872}, {**fresh, "forget": 0.1, "fd_judge": 0.031858})
    assert kernels["attack_topups"][0]["reproduced"]  # the same model on other CPU kernels
    path = cells_mod.merge_topup({**old, "fd_judge": 0.906}, {**fresh, "forget": 0.1, "fd_judge": 0.424})
    assert not path["attack_topups"][0]["reproduced"]  # another model


def test_bench_refuses_a_model_the_judge_cannot_grade(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="runs on the testbed"):
        plan(BenchConfig(model=str(tiny_model_dir), methods=["uce"], tasks=["circle"], attacks=[], out=str(tmp_path / "b")))


def test_a_failing_cell_comes_back_as_an_error_cell(tmp_path):
    job = {"task": "circle", "label": "uce", "method": "uce", "seed": 0, "out": str(tmp_path / "cell"), "model": str(tmp_path / "none")}
    cell = cells_mod.run_isolated(job, threads=1)
    assert cell["method"] == "uce" and "error" in cell and "log:" in cell["error"]


# ------------------------------------------------------------------ aggregation and report
def cell(method, seed, forget, retain, ttt=None, asr=None, task="circle"):
    return {"task": task, "method": method, "seed": seed, "commit": "abc", "forget": forget, "forget_geometric": forget,
            "unrecognised": 0.0, "anchor_rate": 0.0, "retain_seen": retain, "retain_unseen": retain,
            "retain_unseen_before": 0.9, "lookalike_unseen": None, "lookalike_unseen_before": None, "train_seconds": 10.0 + seed,
            "total_seconds": 20.0, "time_to_target_seconds": ttt, "seconds_per_step": 2.0 if method == "trust-static" else 3.0, "forget_before": 0.9, "retain_seen_before": 0.9,
            "forget_geometric_before": 0.9, "curve": [{"step": 1, "train_seconds": 5.0, "forget": forget, "retain_unseen": retain}],
            **({"asr": asr, "attack_prompts": {a: 16 for a in asr}, "attack_hash": attack_hash()} if asr else {})}


def test_summary_means_intervals_median_time_and_pooled_asr():
    cells = [cell("original", 0, 0.9, 0.9, asr={"p4d": 1.0}),
             cell("trust", 0, 0.0, 0.89, ttt=5.0, asr={"p4d": 0.125, "mma": 0.0}), cell("trust", 1, 0.02, 0.88, ttt=7.0),
             cell("trust", 2, 0.04, 0.90, ttt=None), cell("esd-x", 0, 0.5, 0.5, asr={"p4d": 0.5, "mma": 0.25}),
             cell("salun", 0, 0.0, 0.9, ttt=28.0), cell("trust-static", 0, 0.0, 0.9, ttt=1.0),
             cell("uce", 0, 0.0, 0.9, ttt=0.4), cell("trust:reg=csr", 0, 0.0, 0.9, ttt=None)]
    s = summarise(cells, stale={("circle", "esd-x", 0)})
    t = s["tasks"]["circle"]["methods"]["trust"]
    assert t["forget"]["n"] == 3 and t["forget"]["mean"] == pytest.approx(0.02) and t["forget"]["low"] < 0.02 < t["forget"]["high"]
    assert t["time_to_target"] == {"median": 7.0, "reached": 2, "n": 3}  # the miss counts as slowest
    assert t["asr"]["p4d"]["rate"] == 0.125 and t["asr"]["p4d"]["n"] == 16 and t["asr"]["p4d"]["high"] > 0.125
    assert t["meets_bar"] and not s["tasks"]["circle"]["methods"]["esd-x"]["meets_bar"]
    assert s["tasks"]["circle"]["methods"]["esd-x"]["stale"] == [0]
    assert s["tasks"]["circle"]["original"]["asr"]["p4d"]["rate"] == 1.0
    # TRUST's median time to target over the fastest trained baseline that reaches it (its own variants are no
    # rival; a training-free method is shown beside it); a TRUST label that never reaches it has no ratio
    assert s["tasks"]["circle"]["speed"] == {"fastest_baseline": "salun", "fastest_baseline_seconds": 28.0,
                                             "fastest_training_free": "uce", "fastest_training_free_seconds": 0.4,
                                             "time_to_target_ratio": {"trust": 0.25}, "step_ratio_dynamic_static": 1.5}
    section = task_tables("circle", s["tasks"]["circle"], s["attacks"])
    assert "`trust` 0.25 (bar: ≤ 0.33)" in section and "`uce` (0.4 s)" in section
    table = headline(s)
    assert "p4d 50 [" in table and "(100)" in table and "7 (2/3)" in table


def test_pre_attack_asr_is_pooled_and_shown_beside_the_attacks():
    """The target prompts alone on the attacks' seeds: the floor under every ASR of the cell, in both tables."""
    cells = [{**cell("original", 0, 0.9, 0.9, asr={"p4d": 1.0}), "pre_attack_asr": 1.0},
             {**cell("trust", 0, 0.0, 0.89, asr={"p4d": 0.5, "mma": 0.25}), "pre_attack_asr": 0.25},
             {**cell("trust", 1, 0.0, 0.89, asr={"p4d": 0.5}), "pre_attack_asr": 0.5}, cell("trust", 2, 0.0, 0.89)]
    s = summarise(cells)
    pre = s["tasks"]["circle"]["methods"]["trust"]["pre_attack_asr"]
    assert pre["n"] == 32 and pre["rate"] == pytest.approx(12 / 32)  # 4 + 8 of 16 prompts each; seed 2 not attacked
    assert s["tasks"]["circle"]["original"]["pre_attack_asr"]["rate"] == 1.0
    section = task_tables("circle", s["tasks"]["circle"], s["attacks"])
    assert "| method | pre-attack ASR % | p4d ASR % | mma ASR % |" in section
    assert "| `trust` | 38 [" in section
    assert "| 38 [" in headline(s) and "pre-attack ASR %" in headline(s)


def test_outputs_and_readme_block_are_generated_from_the_cells(tmp_path):
    cells = [cell("original", 0, 0.9, 0.9, asr={"p4d": 1.0}), cell("trust", 0, 0.0, 0.89, ttt=5.0, asr={"p4d": 0.0})]
    floor = {"model": "testbed", "task": "circle", "floor": {"asr": 0.375, "asr_ci": [0.18, 0.61], "prompts": ["p"] * 16}}
    (tmp_path / "floor.json").write_text(json.dumps({"rows": [floor, {**floor, "model": "runs/x"}]}))
    s = write_outputs(cells, tmp_path)
    assert s["tasks"]["circle"]["floor"] == {"rate": 0.375, "low": 0.18, "high": 0.61, "n": 16}  # the original's row
    assert "Word floor: 38 [18, 61] % of 16 target prompts" in (tmp_path / "results.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    header = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert header.startswith("task,method,seed,commit") and header.endswith("asr_p4d")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nrest\n")
    update_readme(readme, s, "results/bench/bench.json")
    text = readme.read_text()
    assert "old table" not in text and "| circle | `trust` |" in text and text.endswith("rest\n")
    assert "| 38 [18, 61] |" in text  # the word floor column


def test_a_report_alone_flags_cells_of_changed_method_code(tmp_path):
    """`--report-only` has no plan to compare settings with, but it still tells which cells ran other code."""
    from trust_unlearn.bench.cells import source_hash

    cells = [cell("original", 0, 0.9, 0.9), {**cell("trust", 0, 0.0, 0.89), "source_hash": source_hash("trust")},
             {**cell("advunlearn", 0, 0.9, 0.9), "source_hash": "0" * 12}]
    s = write_outputs(cells, tmp_path)
    methods = s["tasks"]["circle"]["methods"]
    assert methods["advunlearn"]["stale"] == [0] and methods["trust"]["stale"] == []
    table = headline(s)
    assert "| circle | `advunlearn` (stale) |" in table and "| circle | `trust` |" in table and "rerun-stale" in table
    assert "(stale: seeds 0)" in (tmp_path / "results.md").read_text()
    assert "(stale)" not in headline(write_outputs(cells[:2], tmp_path))


def test_an_attack_on_a_retrained_model_that_differs_is_marked():
    topup = lambda ok: [{"attacks": ["paraphrase"], "reproduced": ok, "differences": {} if ok else {"forget": [0.0, 0.1]}}]  # noqa: E731
    cells = [cell("original", 0, 0.9, 0.9, asr={"p4d": 1.0, "paraphrase": 1.0}),
             {**cell("trust", 0, 0.0, 0.89, asr={"p4d": 0.0, "paraphrase": 0.5}), "attack_topups": topup(False)},
             {**cell("uce", 0, 0.0, 0.89, asr={"p4d": 0.0, "paraphrase": 0.0}), "attack_topups": topup(True)}]
    s = summarise(cells)
    rows = s["tasks"]["circle"]["methods"]
    assert rows["trust"]["retrained_attacks"] == ["paraphrase"] and rows["uce"]["retrained_attacks"] == []
    section = task_tables("circle", s["tasks"]["circle"], s["attacks"])
    assert "| `trust` | - | 0 [0, 19] (n=16) | 50 [28, 72] (n=16) † |" in section and "same recipe, not of the same weights" in section
    assert "| `uce` | - | 0 [0, 19] (n=16) | 0 [0, 19] (n=16) |" in section
    assert "paraphrase 50 [28, 72] (100) †" in headline(s) and "same recipe, not of the same weights" in headline(s)
    reproduced = summarise([c for c in cells if c["method"] != "trust"])
    assert "†" not in headline(reproduced) and "same recipe" not in headline(reproduced)


def test_asrs_of_earlier_attack_code_are_marked_and_replaced_on_rerun():
    cells = [cell("original", 0, 0.9, 0.9, asr={"p4d": 1.0}),
             {**cell("trust", 0, 0.0, 0.89, asr={"p4d": 0.5}), "attack_hash": "older"},
             cell("uce", 0, 0.0, 0.89, asr={"p4d": 0.0})]
    s = summarise(cells)
    rows = s["tasks"]["circle"]["methods"]
    assert rows["trust"]["old_attack_code"] == [0] and rows["uce"]["old_attack_code"] == []
    section = task_tables("circle", s["tasks"]["circle"], s["attacks"])
    assert "| `trust` ‡ |" in section and "| `uce` |" in section and "not comparable" in section
    assert "(100) ‡" in headline(s)
    assert "‡" not in headline(summarise([cells[0], cells[2]]))
    # only --rerun-stale measures them again, every attack of the job, and the new figures replace the old
    job = {"attacks": ["p4d", "mma"]}
    assert runner.attacks_to_run(cells[1], job, rerun_stale=False) == ["mma"]
    assert runner.attacks_to_run(cells[1], job, rerun_stale=True) == ["p4d", "mma"]
    assert runner.attacks_to_run(cells[2], job, rerun_stale=True) == ["mma"]
    fresh = {**cells[1], "asr": {"p4d": 0.125, "mma": 0.0}, "asr_ci": {"p4d": [0, 1], "mma": [0, 1]},
             "attack_prompts": {"p4d": 16, "mma": 16}, "attack_seconds": {"p4d": 1.0, "mma": 1.0}, "pre_attack_asr": 0.0,
             "attack_hash": attack_hash(), "commit": "new", "finished": "now", "total_seconds": 9.0}
    merged = cells_mod.merge_topup({**cells[1], "pre_attack_asr": 0.25}, fresh)
    assert merged["asr"] == {"p4d": 0.125, "mma": 0.0} and merged["pre_attack_asr"] == 0.0
    assert merged["attack_hash"] == attack_hash() and merged["commit"] == "abc"
    assert merged["attack_topups"][-1]["replaced"] == {"asr": {"p4d": 0.5}, "pre_attack_asr": 0.25, "attack_hash": "older"}
    assert merged["attack_topups"][-1]["reproduced"]  # a pre-attack ASR on other seeds is no sign of another model
    assert summarise([cells[0], merged])["tasks"]["circle"]["methods"]["trust"]["old_attack_code"] == []


# ------------------------------------------------------------------ tuning
def tuning_cell(task, label, curve):
    return {"task": task, "method": label, "seed": 0,
            "curve": [{"step": s, "forget": f, "retain_unseen": 0.9 - d, "retain_unseen_before": 0.9, "train_seconds": s}
                      for s, f, d in curve]}


def test_tuning_rule_lowest_forget_within_the_retain_slack_ties_to_shorter():
    from trust_unlearn.evaluation.protocol import DEV_TASKS

    label = "esd-x"
    cells = [tuning_cell(t, grid_label(label, 1e-5), [(100, 0.5, 0.0), (200, 0.1, 0.01), (400, 0.1, 0.02)]) for t in DEV_TASKS]
    cells += [tuning_cell(t, grid_label(label, 3e-5), [(100, 0.05, 0.05), (200, 0.0, 0.1), (400, 0.0, 0.2)]) for t in DEV_TASKS]
    points = grid_points(cells, label, [1e-5, 3e-5, 1e-4])  # 1e-4 not run yet: left out
    assert len(points) == 6
    assert select(points) == {"lr": 1e-5, "steps": 200, "forget": 0.1, "retain_drop": pytest.approx(0.01), "train_seconds": 200}
    # none within 3 points: the best forget + retain drop
    worse = [p for p in points if p["retain_drop"] > 0.03]
    assert (select(worse)["lr"], select(worse)["steps"]) == (3e-5, 100)
    assert select([]) is None
    # the grid report: the choice in bold, a learning rate still missing dev tasks named
    cells.append(tuning_cell(DEV_TASKS[0], grid_label(label, 1e-4), [(100, 0.0, 0.0), (200, 0.0, 0.0), (400, 0.0, 0.0)]))
    report = grid_report(cells)
    assert "| **1e-05** | **200** | **10.0%** | **+1.0** | **200** | **yes** |" in report
    assert "| 3e-05 | 100 | 5.0% | +5.0 | 100 | no |" in report
    assert "incomplete: lr 0.0001 lack runs" in report


def test_a_method_whose_schedule_follows_the_run_length_is_tuned_on_a_run_of_each_length():
    """AdvUnlearn's warm-up is a fifth of the run: its 100-step point is a 100-step run (80 attacked steps), not
    step 100 of the 400-step run (20 attacked steps)."""
    from trust_unlearn.evaluation.protocol import DEV_TASKS

    assert set(grid_runs("esd-x", 1e-5).values()) == {"esd-x:lr=1e-05"}
    runs = grid_runs("advunlearn", 1e-5)
    assert runs == {100: "advunlearn:lr=1e-05,steps=100", 200: "advunlearn:lr=1e-05,steps=200", 400: "advunlearn:lr=1e-05"}
    long_runs = [tuning_cell(t, runs[400], [(100, 0.9, 0.0), (200, 0.9, 0.0), (400, 0.2, 0.02)]) for t in DEV_TASKS]
    assert grid_points(long_runs, "advunlearn", [1e-5]) == []  # the runs of 100 and 200 steps are missing
    cells = long_runs + [tuning_cell(t, runs[s], [(s, f, 0.01)]) for t in DEV_TASKS for s, f in ((100, 0.5), (200, 0.3))]
    assert {p["steps"]: p["forget"] for p in grid_points(cells, "advunlearn", [1e-5])} == {100: 0.5, 200: 0.3, 400: 0.2}
    assert "## advunlearn\n" in grid_report(cells) and "incomplete" not in grid_report(cells)
    cfg = tuning_config(["advunlearn", "esd-x"], {"advunlearn": [1e-5], "esd-x": [1e-5]}, "unused", 1)
    trained = {j["label"]: (j["settings"]["common"]["steps"], j["checkpoints"])
               for j in grid_jobs(cfg) if j["label"] != "original" and j["task"] == DEV_TASKS[0]}
    assert trained == {runs[100]: (100, []), runs[200]: (200, []), runs[400]: (400, [100, 200]),
                       "esd-x:lr=1e-05": (400, [100, 200])}


def test_quick_profile_is_one_task_one_seed_few_steps():
    cfg = BenchConfig().apply_quick()
    assert (cfg.tasks, cfg.seeds, cfg.common["steps"], cfg.attack_prompts) == (["circle"], 1, 12, 2)
    assert len([j for j in plan(cfg) if j["label"] != "original"]) == len(runner.DEFAULT_METHODS)


def test_an_original_cell_goes_stale_with_the_evaluation_not_the_training_engine(monkeypatch):
    original, trained = cells_mod.source_hash("original"), cells_mod.source_hash("trust")
    monkeypatch.setattr(cells_mod, "ENGINE_FILES", cells_mod.ENGINE_FILES[:-1])  # "edit" the training engine
    assert cells_mod.source_hash("original") == original and cells_mod.source_hash("trust") != trained
    monkeypatch.setattr(cells_mod, "EVALUATION_FILES", cells_mod.EVALUATION_FILES[:-1])  # and the evaluation
    assert cells_mod.source_hash("original") != original


def test_new_scorer_weights_make_only_the_scorer_steered_methods_stale(monkeypatch):
    """TRUST's masks and stopping probes follow the alignment scorer: its weights are part of what a TRUST cell ran."""
    before = {m: cells_mod.source_hash(m) for m in ("trust", "trust-robust", "esd-x", "original")}
    monkeypatch.setattr(cells_mod, "SCORER_WEIGHTS", "testbed/weights/judge.safetensors")  # "retrain" the scorer
    after = {m: cells_mod.source_hash(m) for m in before}
    assert [m for m in before if before[m] != after[m]] == ["trust", "trust-robust"]


def test_a_stopping_rule_edit_makes_only_the_scorer_steered_methods_stale(monkeypatch):
    """Without an alignment scorer no run builds a StoppingRule: editing the rule leaves the baselines' cells current."""
    before = {m: cells_mod.source_hash(m) for m in ("trust", "trust-robust", "esd-x", "uce", "original")}
    monkeypatch.setattr(cells_mod, "_read_as_declared", lambda path, pins, real=cells_mod._read_as_declared: (
        real(path, pins) + (b"# edited" if path.name == "stopping.py" and not pins else b"")))
    after = {m: cells_mod.source_hash(m) for m in before}
    assert [m for m in before if before[m] != after[m]] == ["trust", "trust-robust"]


def test_a_probe_interval_that_decides_nothing_does_not_make_a_cell_stale():
    job = {"method": "trust-robust", "settings": {"common": {"steps": 200, "stop": False, "probe_every": 0}, "method_args": {}}}
    cell = {"source_hash": cells_mod.source_hash("trust-robust"),
            "settings": {"common": {"steps": 200, "stop": False}, "method_args": {}}}
    assert not runner.is_stale(cell, job)  # it never stopped: its probes were only logged
    stopping = {"common": {"steps": 200, "probe_every": 0}, "method_args": {}}
    assert runner.is_stale({**cell, "settings": {"common": {"steps": 200}, "method_args": {}}}, {**job, "settings": stopping})
    assert runner.is_stale(cell, {**job, "settings": {"common": {"steps": 100, "stop": False}, "method_args": {}}})


def test_figure_neutral_edits_name_a_reachable_version():
    """A declared figure-neutral edit is read as the version at its commit: that commit must be in the history
    (a rebase that orphans it would silently mark every cell stale)."""
    import shutil
    import subprocess

    from trust_unlearn.bench.cells import FIGURE_NEUTRAL_EDITS, ROOT

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout")
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    if shallow.stdout.strip() == "true":
        pytest.skip("a shallow clone holds no history to check")
    for (rel, _), commit in FIGURE_NEUTRAL_EDITS.items():
        shown = subprocess.run(["git", "show", f"{commit}:src/trust_unlearn/{rel}"], cwd=ROOT, capture_output=True)
        assert shown.returncode == 0 and shown.stdout, f"{rel} at {commit} is not in this repository's history"
        merged = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT)
        assert merged.returncode == 0, f"{commit} is not an ancestor of HEAD"
