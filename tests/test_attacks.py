"""Attacks: projection onto the vocabulary, determinism, bad inputs, the CLI's error paths (tiny models)."""
import pytest
import torch

from conftest import build_tiny_pipeline
from trust_unlearn.attacks import ATTACKS, get_attack, resolve_attacks, run_attack_suite, target_prompts
from trust_unlearn.attacks.base import AsrProtocol, TextOps, contains_banned, is_banned
from trust_unlearn.cli import main
from trust_unlearn.errors import UserError
from trust_unlearn.pipeline import LoadedModel
from trust_unlearn.world.concepts import parse_concept


class FakeJudge:
    """Reads 'circle' when the image is bright: enough to exercise the ASR bookkeeping."""

    def read(self, images):
        return [{"shape": "circle" if float(im.mean()) > 0.5 else "square", "colour": "red", "background": "plain"}
                for im in images]


@pytest.fixture(scope="module")
def tiny():
    pipe = build_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(pipe=pipe, source="tiny", guidance_scale=2.0, num_inference_steps=2, resolution=16)


def test_registry_has_every_attack_and_rejects_unknown_names():
    assert set(ATTACKS) == {"unlearndiffatk", "p4d", "ringabell", "mma", "paraphrase"}
    assert get_attack("Ring-A-Bell") is ATTACKS["ringabell"]
    assert resolve_attacks(["all"]) == ["unlearndiffatk", "p4d", "ringabell", "mma", "paraphrase"]
    assert resolve_attacks("mma,p4d") == ["mma", "p4d"]
    with pytest.raises(UserError, match="unknown attack 'nope'.*unlearndiffatk"):
        get_attack("nope")
    with pytest.raises(UserError, match="no attack named"):
        resolve_attacks([])


def test_projection_lands_on_whole_word_tokens_that_replay(tiny):
    text = TextOps(tiny.pipe)
    words = ["circle", "red", "photo", "background"]
    ids = [text.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words]
    table = text.embedding.weight.detach()
    noisy = table[ids] + 1e-4 * torch.randn(len(ids), table.shape[1], generator=torch.Generator().manual_seed(0))
    allowed = text.allowed()
    assert text.project(noisy, allowed).tolist() == ids
    # a banned word is never a projection target: the nearest allowed token is something else
    no_circle = text.allowed(("circle",))
    assert ids[0] not in no_circle.tolist()
    assert text.project(noisy[:1], no_circle).item() != ids[0]
    # any projected prompt re-tokenizes to exactly the projected tokens
    rand = allowed[torch.randint(0, len(allowed), (5,), generator=torch.Generator().manual_seed(1))]
    prompt = text.prompt(rand.tolist())
    assert text.tokenizer(prompt, add_special_tokens=False).input_ids == rand.tolist()
    ids_direct, _ = text.ids_from_tokens([rand.tolist()])
    assert torch.equal(ids_direct, text.tokenize([prompt])[0])


def test_soft_encoding_matches_the_pipeline_and_is_differentiable(tiny):
    text = TextOps(tiny.pipe)
    ids, mask = text.tokenize(["a red circle"])
    ref, _ = tiny.pipe.encode_prompt(["a red circle"], "cpu", 1, False)
    assert torch.allclose(text.encode(ids, mask), ref, atol=1e-6)
    emb = text.embedding.weight[ids[0, 1:3]].detach().clone().requires_grad_(True)
    states = text.encode(ids, mask, [1, 2], emb)
    assert torch.allclose(states, ref, atol=1e-6)
    states.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_banned_words():
    assert is_banned("circles", ("circle",)) and is_banned("reddish", ("red",))
    assert not is_banned("hundred", ("red",)) and not is_banned("square", ("circle",))
    assert contains_banned("a Red disk", ("red",)) and not contains_banned("a crimson disk", ("red",))


@pytest.mark.parametrize("name", ["unlearndiffatk", "p4d", "ringabell", "mma"])
def test_attacks_are_deterministic_for_a_seed(tiny, name):
    concept = parse_concept("circle")
    prompt = target_prompts(concept, 1)[0]

    def found(seed):
        return get_attack(name)(tiny, tiny, concept, budget=2, seed=seed).candidates(prompt, 0)

    a, b = found(0), found(0)
    assert a == b and a[0].strip() and len(a) == (3 if name == "mma" else 1)  # MMA: its best distinct prompts
    assert len(set(a)) == len(a)
    if name in ("ringabell", "mma"):
        assert not any(contains_banned(p, ("circle",)) for p in a)
    else:
        assert a[0].endswith(prompt)  # a discrete prefix in front of the target prompt
    assert found(0) != found(5) or name == "ringabell"  # ringabell may converge to its neutral seed


def test_paraphrase_uses_heldout_synonyms(tiny):
    concept = parse_concept("circle")
    cands = get_attack("paraphrase")(tiny, tiny, concept, budget=4).candidates("a red circle on a plain background", 0)
    assert cands[:2] == ["a red disk on a plain background", "a red round dot on a plain background"]
    assert len(cands) == 4 and not any(contains_banned(c, ("circle",)) for c in cands)


def test_suite_reports_asr_and_writes_outputs(tiny, tmp_path):
    res = run_attack_suite(tiny, tiny, "circle", ["paraphrase", "mma"], budget=1, n_prompts=2, out=tmp_path,
                           judge=FakeJudge(), show_progress=False, protocol=AsrProtocol(seeds_per_prompt=2))
    for name in ("paraphrase", "mma"):
        r = res[name]
        assert set(r) >= {"asr", "pre_attack_asr", "seconds", "n_prompts", "prompts"}
        assert 0 <= r["asr"] <= 1 and 0 <= r["pre_attack_asr"] <= 1 and r["n_prompts"] == 2 == len(r["prompts"])
        assert (tmp_path / f"attack-{name}.csv").exists() and (tmp_path / f"attack-{name}.png").exists()
    assert (tmp_path / "attacks.json").exists()
    again = run_attack_suite(tiny, tiny, "circle", ["mma"], budget=1, n_prompts=2, judge=FakeJudge(), show_progress=False,
                             protocol=AsrProtocol(seeds_per_prompt=2))
    assert again["mma"]["prompts"] == res["mma"]["prompts"]


def test_each_target_prompt_is_graded_on_its_own_seeds(tiny, monkeypatch):
    import trust_unlearn.attacks as attacks

    drawn = []

    def fake_generate(model, prompts, seeds, **kw):
        drawn.extend(zip(prompts, seeds))
        return torch.rand(len(seeds), 3, 16, 16)

    monkeypatch.setattr(attacks, "generate", fake_generate)
    protocol = AsrProtocol(seeds_per_prompt=2)
    # the same prompt twice as a target (a repeat), and two candidates for the second target
    rows = attacks.judge_candidates(tiny, parse_concept("circle"), [["a circle"], ["a circle", "a disk"]], protocol,
                                    judge=FakeJudge(), show_progress=False)
    assert drawn == [("a circle", s) for s in protocol.seeds(0)] + [(p, s) for p in ("a circle", "a disk")
                                                                   for s in protocol.seeds(1)]
    assert not set(protocol.seeds(0)) & set(protocol.seeds(1))
    assert [r["tried"] for r in rows] == [1, 2] and all(len(r["images"]) == 2 for r in rows)


def test_bad_inputs_are_user_errors(tiny):
    concept = parse_concept("circle")
    with pytest.raises(UserError, match="unknown attack"):
        run_attack_suite(tiny, tiny, concept, ["nope"], judge=FakeJudge())
    with pytest.raises(UserError, match="zero budget"):
        run_attack_suite(tiny, tiny, concept, ["mma"], budget=0, judge=FakeJudge())
    with pytest.raises(UserError, match="at least 1"):
        get_attack("p4d")(tiny, tiny, concept, budget=0)
    with pytest.raises(UserError, match="empty prompt set"):
        run_attack_suite(tiny, tiny, concept, ["mma"], prompts=["", "  "], judge=FakeJudge())
    with pytest.raises(UserError, match="empty prompt set"):
        run_attack_suite(tiny, tiny, concept, ["mma"], n_prompts=0, judge=FakeJudge())
    with pytest.raises(UserError, match="unknown concept word"):
        run_attack_suite(tiny, tiny, "banana", ["mma"], judge=FakeJudge())


@pytest.mark.parametrize("argv, message", [
    (["--concept", "circle", "--attack", "nope"], "unknown attack 'nope'"),
    (["--concept", "circle", "--budget", "0"], "zero budget"),
    (["--concept", "circle", "--prompts", "0"], "empty prompt set"),
    (["--concept", "  "], "empty concept"),
    (["--concept", "banana", "--model", "/nonexistent"], "unknown concept word"),
    (["--concept", "circle", "--success-share", "0"], "success-share"),
    (["--concept", "circle", "--prompts-file", "/nonexistent.txt"], "does not exist"),
])
def test_cli_error_paths(argv, message, capsys):
    assert main(["attack", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_empty_prompts_file(tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("\n  \n")
    assert main(["attack", "--concept", "circle", "--prompts-file", str(f)]) == 2
    assert "empty prompt set" in capsys.readouterr().err


def test_word_filter_rewrites_only_the_concept_word(tiny_model_dir):
    from trust_unlearn.attacks.weak import word_filter_model
    from trust_unlearn.pipeline import load_model

    concept = parse_concept("circle")
    weak, base = word_filter_model(concept, str(tiny_model_dir)), load_model(str(tiny_model_dir))
    anchor = weak.source.split("-> ")[1].split(")")[0]
    assert anchor in ("square", "triangle", "cross")
    w, b = TextOps(weak.pipe), TextOps(base.pipe)
    assert torch.allclose(w.states(["a red circle"]), b.states([f"a red {anchor}"]), atol=1e-6)
    assert torch.allclose(w.states(["a red disk"]), b.states(["a red disk"]))
    assert "circles" in weak.extra["word_filter"]


def test_per_attack_budgets(tiny):
    res = run_attack_suite(tiny, tiny, "circle", ["paraphrase", "mma"], budget={"paraphrase": 3, "mma": 1}, n_prompts=1,
                           judge=FakeJudge(), show_progress=False, protocol=AsrProtocol(seeds_per_prompt=1))
    assert res["paraphrase"]["budget"] == 3 and res["paraphrase"]["candidates_tried"] == [3]
    assert res["mma"]["budget"] == 1
    with pytest.raises(UserError, match="zero budget"):
        run_attack_suite(tiny, tiny, "circle", ["mma"], budget={"mma": 0}, judge=FakeJudge())


def test_cli_missing_judge(capsys):
    assert main(["attack", "--concept", "circle", "--judge", "/nonexistent/judge.safetensors"]) == 2
    assert "--judge /nonexistent/judge.safetensors does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["unlearndiffatk", "p4d"])
def test_confined_prefix_never_uses_the_concepts_attribute_words(tiny, name):
    from trust_unlearn.attacks.base import attribute_words

    concept = parse_concept("red circle")
    words = attribute_words(concept)
    assert {"circle", "square", "triangle", "cross", "red", "blue", "green", "yellow"} <= set(words)
    assert "plain" not in words  # only the attributes the concept constrains
    attack = get_attack(name)(tiny, tiny, concept, budget=2, seed=0, confine=True)
    allowed = attack.text.words(attack.text.allowed(attack.prefix_banned))
    vocab = set(attack.text.vocab_words)
    assert vocab & set(words)  # the tiny vocabulary has attribute words to leave out
    assert not any(is_banned(w, words) for w in allowed) and len(allowed) < len(vocab)
    prompt = target_prompts(concept, 1)[0]
    (found,) = attack.candidates(prompt, 0)
    assert found.endswith(prompt) and not contains_banned(found[: -len(prompt)], words)
    assert attack.details()["confined_words"] == list(words)
    assert "confined_words" not in get_attack(name)(tiny, tiny, concept, budget=2).details()  # off by default
