"""The shapes world: determinism, vocabularies, concepts."""
import pytest
import torch

from trust_unlearn.errors import UserError
from trust_unlearn.world.captions import (
    HELDOUT_WORDS,
    TRAIN_WORDS,
    _words,
    all_train_captions,
    heldout_phrases,
    random_captions,
)
from trust_unlearn.world.concepts import parse_concept, retain_scenes, target_scenes
from trust_unlearn.world.shapes import Scene, random_scenes, render


def test_generator_is_deterministic_for_a_seed():
    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        scenes = random_scenes(16, g)
        return scenes, render(scenes, g), random_captions(scenes, g, dropout=0.1)

    a, b, c = sample(3), sample(3), sample(4)
    assert a[0] == b[0] and a[2] == b[2]
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[1].shape == (16, 3, 32, 32) and 0 <= a[1].min() and a[1].max() <= 1


def test_rendered_colour_is_the_shape_colour():
    g = torch.Generator().manual_seed(0)
    img = render([Scene("square", "red", "plain")] * 4, g)
    # the most saturated-red pixels exist and are red-dominant
    red = img[:, 0] - img[:, 1:].max(1).values
    assert (red.flatten(1).max(1).values > 0.5).all()


def test_training_captions_never_use_heldout_words():
    assert not TRAIN_WORDS & HELDOUT_WORDS
    g = torch.Generator().manual_seed(0)
    sampled = random_captions(random_scenes(500, g), g)
    for caption in all_train_captions() + sampled:
        assert not _words(caption) & HELDOUT_WORDS, caption
    for phrase, _ in heldout_phrases():
        assert _words(phrase) & HELDOUT_WORDS, phrase


def test_some_training_captions_omit_attributes():
    captions = all_train_captions()
    assert "a circle" in captions and "something red" in captions


@pytest.mark.parametrize("text,kind,constraints", [
    ("circle", "individual", {"shape": "circle"}),
    ("red", "individual", {"colour": "red"}),
    ("striped background", "individual", {"background": "striped"}),
    ("red circle", "combined", {"colour": "red", "shape": "circle"}),
    ("circle on striped background", "conditional", {"shape": "circle", "background": "striped"}),
    ("a circle on a striped background", "conditional", {"shape": "circle", "background": "striped"}),
])
def test_concepts_parse(text, kind, constraints):
    c = parse_concept(text)
    assert c.kind == kind and c.attributes == constraints
    assert all(c.matches(s) for s in target_scenes(c))
    assert not any(c.matches(s) for s in retain_scenes(c))


def test_combined_concept_keeps_lookalikes_in_retain():
    c = parse_concept("red circle")
    retain = retain_scenes(c)
    assert Scene("square", "red", "plain") in retain and Scene("circle", "blue", "plain") in retain
    assert c.shares_part(Scene("square", "red", "plain")) and not c.shares_part(Scene("square", "blue", "plain"))


@pytest.mark.parametrize("text,says", [
    ("", "empty concept"), ("   ", "empty concept"), ("hexagon", "unknown concept word 'hexagon'"),
    ("red blue", "names two colours"), ("circle on a chessboard", "unknown concept word"),
])
def test_bad_concepts_get_clear_errors(text, says):
    with pytest.raises(UserError) as err:
        parse_concept(text)
    assert says in str(err.value)
    if "unknown" in says or "empty" in says:
        assert "circle/square/triangle/cross" in str(err.value)  # lists the valid words
