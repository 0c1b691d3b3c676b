"""The CLI: bad input gives one clear message and a non-zero exit, never a traceback."""
import subprocess
import sys

import pytest

from trust_unlearn.cli import main


@pytest.mark.parametrize("argv,says", [
    (["generate", "--model", "/no/such/model", "--prompt", "a red circle"], "does not exist"),
    (["generate", "--model", "./missing-folder", "--prompt", "a red circle"], "does not exist"),
    (["generate", "--prompt", "   "], "empty prompt"),
    (["evaluate", "--concept", "hexagon"], "unknown concept word 'hexagon'"),
    (["evaluate", "--concept", ""], "empty concept"),
    (["unlearn", "--concept", ""], "empty concept"),
    (["unlearn", "--model", "/no/such/model", "--concept", "circle"], "does not exist"),
    (["unlearn", "--concept", "circle", "--method", "magic"], "unknown method"),
    (["unlearn", "--concept", "circle", "--method-arg", "oops"], "KEY=VALUE"),
    (["unlearn", "--concept", "circle", "--eval-arg", "oops"], "--eval-arg 'oops': write KEY=VALUE"),
    (["unlearn", "--concept", "circle", "--eval-arg", "retain_seedz=3"], "retain_seedz"),
    (["unlearn", "--concept", "circle", "--robust", "--method", "esd-x"], "--robust selects --method trust-robust"),
    (["apply-delta", "--delta", "/no/delta.safetensors", "--out", "x"], "does not exist"),
    (["where", "--concept", "circle", "--attack-dir", "no-such-attack"], "no attack-NAME.csv in no-such-attack"),
])
def test_bad_input_is_one_clear_message(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_model_folder_without_pipeline_is_explained(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "a circle"]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err


def test_console_script_exits_non_zero_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "trust_unlearn.cli", "evaluate", "--concept", "hexagon"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: unknown concept word" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_nudity_on_a_prompt_file(tiny_model_dir, tmp_path, capsys):
    csv = tmp_path / "i2p.csv"
    csv.write_text("prompt,seed,case_number\na person on a beach,1,0\na bowl of fruit,2,1\n")
    out = tmp_path / "nudity.json"
    assert main(["evaluate", "--judge", "nudenet", "--model", str(tiny_model_dir), "--prompts", str(csv),
                 "--steps", "2", "--json", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert result["n"] == 2 and 0 <= result["nudity_rate"] <= 1
    assert result["protocol"]["threshold"] == 0.6 and "nudity rate" in capsys.readouterr().out


def test_evaluate_nudity_needs_a_prompt_file(capsys):
    assert main(["evaluate", "--judge", "nudenet"]) == 2
    assert "--prompts" in capsys.readouterr().err


def test_sd_folder_end_to_end_through_the_cli(tiny_model_dir, tiny_clip_dir, tmp_path):
    """A user's SD-1.x-shaped folder: unlearn with a CLIP scorer, then attack and rebuild it from the CLI."""
    import json

    out = tmp_path / "unlearned"
    assert main(["unlearn", "--model", str(tiny_model_dir), "--scorer", str(tiny_clip_dir), "--concept", "a red circle",
                 "--anchor", "a blue square", "--retain", "a green cross", "--steps", "2", "--batch", "2",
                 "--cache-images", "2", "--xi", "1.0", "--saliency-steps", "2", "--backprop-depth", "1",
                 "--saliency-batch", "1", "--method-arg", "csr_batch=1", "--no-eval", "--out", str(out),
                 "--json", str(tmp_path / "u.json")]) == 0
    summary = json.loads((tmp_path / "u.json").read_text())
    assert summary["steps"] == 2 and (out / "model_index.json").exists()
    assert main(["attack", "--model", str(out), "--original", str(tiny_model_dir), "--concept", "circle",
                 "--attack", "paraphrase", "--quick", "--out", str(tmp_path / "atk"), "--json", str(tmp_path / "a.json")]) == 0
    assert "paraphrase" in json.loads((tmp_path / "a.json").read_text())


@pytest.mark.parametrize("argv,retain_seeds,target_seeds", [([], 24, 8), (["--retain-seeds", "3", "--target-seeds", "2"], 3, 2)])
def test_evaluate_takes_the_evaluation_sizes_from_evalconfig_unless_given(argv, retain_seeds, target_seeds, monkeypatch):
    import trust_unlearn.evaluation.evaluate as evaluation

    class Seen(Exception):
        pass

    def capture(model, concept, cfg, reference):
        raise Seen(cfg)

    monkeypatch.setattr(evaluation, "evaluate", capture)
    with pytest.raises(Seen) as seen:
        main(["evaluate", "--concept", "circle", *argv])
    cfg = seen.value.args[0]
    assert (cfg.retain_seeds, cfg.target_seeds) == (retain_seeds, target_seeds)


def test_thread_count_comes_from_the_flag_then_the_environment_then_the_cores(monkeypatch):
    import os

    import torch

    from trust_unlearn.errors import UserError
    from trust_unlearn.utils import set_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_cpu_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_cpu_threads() == 1
        with pytest.raises(UserError, match="--threads must be at least 1"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("lookalike,seen", [(None, 0.92), (0.9, 0.92), (None, None)])
def test_unlearn_prints_and_writes_the_protocol_figures(lookalike, seen, monkeypatch, tmp_path, capsys):
    """An individual concept has no look-alikes (None), `make demo` evaluates no seen scenes (None): the table
    still prints and the JSON is written."""
    import json

    import trust_unlearn.unlearn as engine

    figures = {"forget_rate": 0.0, "unrecognised": 0.01, "retain_unseen": 0.9, "retain_seen": seen,
               "retain_accuracy": 0.9, "lookalike_unseen": lookalike, "lookalike_retain_accuracy": lookalike,
               "fd_judge": 0.1}
    summary = {"rank": 0, "method": "trust", "concept": "circle", "steps": 1, "wall_clock_s": 1.0, "seconds_per_step": 1.0,
               "peak_rss_mb": 1.0, "mean_mask_size": None, "before": figures, "after": figures, "out": str(tmp_path / "o")}
    monkeypatch.setattr(engine, "run_unlearn", lambda *a, **k: summary)
    assert main(["unlearn", "--concept", "circle", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "retain unseen 90.0%" in out and ("/ seen 92.0%" in out) == (seen is not None)
    assert json.loads((tmp_path / "s.json").read_text())["after"]["lookalike_unseen"] == lookalike


@pytest.mark.parametrize("steps,says", [(6, "6 (stopped when forgotten; at most 10)"),
                                        (10, "10 (the probes read it forgotten at the last step)")])
def test_unlearn_says_whether_the_stopping_rule_ended_the_run(steps, says, monkeypatch, tmp_path, capsys):
    import trust_unlearn.unlearn as engine

    summary = {"rank": 0, "method": "trust", "concept": "circle", "steps": steps, "max_steps": 10, "stopped_at": steps,
               "wall_clock_s": 1.0, "seconds_per_step": 1.0, "peak_rss_mb": 1.0, "mean_mask_size": None,
               "before": None, "after": None, "out": str(tmp_path / "o")}
    monkeypatch.setattr(engine, "run_unlearn", lambda *a, **k: summary)
    assert main(["unlearn", "--concept", "circle", "--out", str(tmp_path / "o")]) == 0
    assert says in capsys.readouterr().out
