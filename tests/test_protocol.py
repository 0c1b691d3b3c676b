"""The evaluation protocol: held-out templates and scenes, disjoint seeds, abstaining judges, intervals."""
import importlib.util
from pathlib import Path

import pytest
import torch

from trust_unlearn import concept_spec
from trust_unlearn.evaluation.evaluate import EvalConfig, build_prompt_sets, retain_figures, target_figures
from trust_unlearn.evaluation.protocol import (DEV_TASKS, EVAL_SEEDS, EVAL_TEMPLATES, TEST_TASKS, TRAIN_SEEDS, evaluation_seeds,
                                               probe_seeds, retain_split, run_rng_seed, training_seeds)
from trust_unlearn.evaluation.stats import mean_ci
from trust_unlearn.report import reading_caption
from trust_unlearn.world.concepts import FULL_TEMPLATES, caption, parse_concept, retain_scenes

TASKS = TEST_TASKS + DEV_TASKS


@pytest.mark.parametrize("task", TASKS)
def test_no_training_prompt_is_an_evaluation_prompt(task):
    spec = concept_spec.testbed_spec(task)
    target, retain = build_prompt_sets(parse_concept(task), EvalConfig())
    trained = set(spec.targets) | set(spec.anchors) | set(spec.retains)
    assert not trained & (set(target.prompts) | set(retain.prompts))
    # and no evaluation template is ever used to caption a run's prompts
    for template in EVAL_TEMPLATES:
        for scene in retain_scenes(parse_concept(task)):
            assert caption(scene, template) not in trained


@pytest.mark.parametrize("task", TASKS)
def test_retain_split_is_a_fixed_partition_with_lookalikes_on_both_sides(task):
    concept = parse_concept(task)
    split = retain_split(concept)
    seen, unseen = set(split["seen"]), set(split["unseen"])
    assert not seen & unseen and seen | unseen == set(retain_scenes(concept))
    assert abs(len(seen) - len(unseen)) <= 2
    if concept.kind != "individual":
        assert any(concept.shares_part(s) for s in seen) and any(concept.shares_part(s) for s in unseen)
    assert retain_split(concept) == split  # fixed: the same split every time
    # the run's default retain prompts describe seen scenes only
    captions = {caption(s, t): s for s in retain_scenes(concept) for t in FULL_TEMPLATES}
    described = {captions[p] for p in concept_spec.testbed_spec(task).retains}
    assert described == seen


def test_seed_ranges_are_disjoint():
    assert EVAL_SEEDS[1] <= TRAIN_SEEDS[0]
    evaluation = {s for e in range(5) for part in ("target", "retain") for s in evaluation_seeds(e, 2000, part)}
    cached = {s for t in range(5) for s in training_seeds(t, 2000)}
    probes = {s for t in range(5) for s in probe_seeds(t, 2000)}
    streams = {run_rng_seed(t, stream) for t in range(5) for stream in (0, 1)}
    training = cached | probes | streams
    assert len(training) == len(cached) + len(probes) + len(streams)  # pairwise disjoint
    assert all(EVAL_SEEDS[0] <= s < EVAL_SEEDS[1] for s in evaluation)
    assert all(TRAIN_SEEDS[0] <= s < TRAIN_SEEDS[1] for s in training)
    assert not evaluation & training
    assert run_rng_seed(0) not in training_seeds(0, 10_000)
    target, retain = build_prompt_sets(parse_concept("circle"), EvalConfig())
    assert not set(target.seeds) & set(retain.seeds)
    # the attacks': each target prompt its own seeds, fixed, disjoint from every evaluation's and every other prompt's
    from trust_unlearn.attacks.base import AsrProtocol

    per_prompt = [AsrProtocol().seeds(i) for i in range(16)]
    attacks = {s for seeds in per_prompt for s in seeds}
    assert len(attacks) == 16 * 4 and per_prompt[3] == AsrProtocol().seeds(3)
    assert not attacks & (evaluation | training) and all(EVAL_SEEDS[0] <= s < EVAL_SEEDS[1] for s in attacks)
    assert not attacks & {s for p in range(16) for s in AsrProtocol(seed=1).seeds(p)}  # another attack seed, other images


def test_a_run_draws_only_training_seeds(tiny_model_dir, monkeypatch):
    """The context's RNG and its cached original images come from the training range."""
    from trust_unlearn.concept_spec import ConceptSpec
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.pipeline import load_model

    model = load_model(str(tiny_model_dir))
    ctx = RunContext(model, ConceptSpec("x", ["a cat"], ["a dog"], ["a car"]).validate(), CommonConfig(seed=3, cache_images=4))
    assert ctx.rng.initial_seed() == run_rng_seed(3)
    drawn = []
    monkeypatch.setattr(ctx, "sample_latents", lambda prompts, seeds: drawn.extend(seeds) or torch.zeros(len(seeds), 4, 8, 8))
    ctx.cache_original_images()
    assert drawn == training_seeds(3, 8)


def test_target_figures_count_only_the_concept_and_report_abstentions_and_the_anchor():
    concept = parse_concept("circle")  # default anchor: triangle
    readings = [{"shape": "circle", "colour": "red", "background": "plain"},
                {"shape": "none", "colour": "red", "background": "plain"},
                {"shape": "none", "colour": "none", "background": "striped"},
                {"shape": "triangle", "colour": "red", "background": "plain"}]
    fig = target_figures(readings, concept)
    assert fig == {"forget": 0.25, "unrecognised": 0.5, "anchor": 0.25}


def test_retain_figures_split_seen_and_unseen():
    concept = parse_concept("red circle")
    split = retain_split(concept)
    scenes = split["seen"] + split["unseen"]
    right = lambda s: {"shape": s.shape, "colour": s.colour, "background": s.background}  # noqa: E731
    wrong = {"shape": "none", "colour": "none", "background": "plain"}
    readings = [right(s) for s in split["seen"]] + [wrong for _ in split["unseen"]]
    fig = retain_figures(readings, scenes, concept)
    assert fig["retain_seen"] == 1.0 and fig["retain_unseen"] == 0.0
    assert fig["lookalike_seen"] == 1.0 and fig["lookalike_unseen"] == 0.0
    assert retain_figures(readings, scenes, parse_concept("red"))["lookalike_unseen"] is None


def test_mean_ci_is_the_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["high"] - 2.0 == pytest.approx(4.302653 / 3**0.5, rel=1e-5)  # t(0.975, 2) * s / sqrt(n)
    assert mean_ci([0.5]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}
    assert mean_ci([None]) is None


def test_abstentions_are_marked_in_the_grid_captions():
    assert reading_caption({"shape": "none", "colour": "red", "background": "plain"}).startswith("!NONE")
    assert not reading_caption({"shape": "circle", "colour": "red", "background": "plain"}).startswith("!")


def _result_bar_module():
    path = Path(__file__).resolve().parent.parent / "scripts" / "result_bar.py"
    spec = importlib.util.spec_from_file_location("result_bar", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_result_bar_aggregates_seeds_and_flags_misses():
    rb = _result_bar_module()
    base = {"task": "red circle", "method": "trust", "commit": "abc", "source_hash": "h", "forget_before": 1.0,
            "forget_geometric_before": 1.0, "retain_unseen_before": 0.95, "lookalike_unseen_before": 0.95,
            "retain_seen_before": 0.95, "unrecognised": 0.02, "retain_seen": 0.95, "train_seconds": 200.0,
            "total_seconds": 700.0, "attack_seconds": {"p4d": 400.0}, "forget_geometric": 0.01}
    bench = [{**base, "seed": s, "forget": f, "retain_unseen": r, "lookalike_unseen": la}
             for s, f, r, la in ((0, 0.0, 0.94, 0.90), (1, 0.02, 0.95, 0.91), (2, 0.01, 0.93, 0.89), (3, 0.5, 0.5, 0.5))]
    bench += [{**base, "method": "esd-x", "seed": 0, "forget": 1.0, "retain_unseen": 0.9, "lookalike_unseen": 0.9},
              {"task": "red circle", "method": "original", "seed": 0, "commit": "abc", "total_seconds": 900.0,
               "attack_seconds": {"p4d": 700.0}}]
    cells = rb.result_cells(bench, ["red circle"], ["trust"], seeds=3)
    assert [c["seed"] for c in cells] == [0, 1, 2]  # other methods, the original and seeds >= 3 left out
    assert cells[0]["total_seconds"] == 300.0 + 200.0  # without attacks, plus the original's shared evaluation
    [row] = rb.bar_rows(cells, ["red circle"], ["trust"])
    assert row["n"] == 3 and row["forget"]["mean"] == pytest.approx(0.01)
    assert row["missed"] == ["lookalike_unseen"]  # 95 -> 90 %: more than 3 points
    assert "MISSED: lookalike_unseen" in rb.markdown([row])
    slow = [{**c, "total_seconds": 601.0} for c in cells]
    assert rb.bar_rows(slow, ["red circle"], ["trust"])[0]["missed"] == ["lookalike_unseen", "time"]
    assert rb.method_label("csr") == "trust:reg=csr" and rb.method_label("cip") == "trust"


def test_judge_abstains_on_empty_backgrounds_and_reads_clean_renders():
    from trust_unlearn.evaluation.judges import get_judge
    from trust_unlearn.world.shapes import JUDGE_RADIUS, all_scenes, render

    g = torch.Generator().manual_seed(123_456)
    scenes = all_scenes() * 8
    judge = get_judge("shapes")
    clean = judge.read(render(scenes, g, radius=JUDGE_RADIUS))
    assert sum(r["shape"] == s.shape for r, s in zip(clean, scenes)) / len(scenes) >= 0.95
    assert sum(r["shape"] == "none" for r in clean) / len(scenes) <= 0.02
    empty = judge.read(render(scenes, g, foreground="none"))
    assert sum(r["colour"] == "none" for r in empty) / len(scenes) >= 0.95


def test_attack_floor_prompts_never_name_the_concept():
    path = Path(__file__).resolve().parent.parent / "scripts" / "attack_floor.py"
    spec = importlib.util.spec_from_file_location("attack_floor", path)
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    from trust_unlearn.attacks import target_prompts
    from trust_unlearn.world.concepts import parse_concept

    for task in ("circle", "red", "red circle", "circle on striped background"):
        concept = parse_concept(task)
        words = floor.other_values(concept)
        assert words and not set(words) & set(concept.attributes.values())
        pairs = floor.prompt_pairs(concept, 16)
        assert [t for t, _ in pairs] == target_prompts(concept, 16)  # the prompts the attacks are run on
        own = set(concept.attributes.values())
        for _, anchor in pairs:  # the anchor prompt swaps one attribute, so the concept is never stated whole
            assert not own <= set(anchor.replace(",", " ").split())
