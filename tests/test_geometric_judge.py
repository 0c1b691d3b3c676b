"""The geometric judge: a non-learned second judge for the shapes world (evaluation/geometric.py)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from trust_unlearn.evaluation import geometric
from trust_unlearn.evaluation.geometric import GeometricJudge
from trust_unlearn.world.shapes import _RGB, BACKGROUNDS, COLOURS, SHAPES, random_scenes, render

# seeds well away from the calibration's (geometric.CALIBRATION_SEED + k)
SEED = 31_337


@pytest.fixture(scope="module")
def judge():
    return GeometricJudge()


def _accuracy(readings, scenes, attr):
    return sum(r[attr] == getattr(s, attr) for r, s in zip(readings, scenes)) / len(scenes)


def _background_only(n, seed):
    g = torch.Generator().manual_seed(seed)
    scenes = random_scenes(n, g)
    return render(scenes, g, radius=(0.0, 0.0)), scenes  # radius 0: no pixel is inside the shape


@pytest.mark.parametrize("px, overhang", [((6, 11), 0.0), ((11, 18), 0.0), ((18, 27), 0.0), ((6, 27), 0.3)])
def test_clean_renders_are_read_correctly(judge, px, overhang):
    g = torch.Generator().manual_seed(SEED + px[0] + int(overhang * 10))
    scenes = random_scenes(128, g)
    readings = judge.read(render(scenes, g, radius=(px[0] / 32, px[1] / 32), overhang=overhang))
    assert _accuracy(readings, scenes, "shape") >= 0.95
    assert _accuracy(readings, scenes, "colour") >= 0.99
    assert _accuracy(readings, scenes, "background") >= 0.99


def test_readings_use_the_world_vocabulary(judge):
    g = torch.Generator().manual_seed(SEED)
    readings = judge.read(render(random_scenes(16, g), g, radius=(0.125, 0.85)))
    for r in readings:
        assert set(r) == {"shape", "colour", "background"}
        assert r["shape"] in (*SHAPES, "none") and r["colour"] in (*COLOURS, "none") and r["background"] in BACKGROUNDS
    assert judge.read(torch.zeros(0, 3, 32, 32)) == []


def test_background_only_images_show_no_object(judge):
    images, scenes = _background_only(64, SEED + 1)
    readings = judge.read(images)
    assert all(r["colour"] == "none" and r["shape"] == "none" for r in readings)
    assert _accuracy(readings, scenes, "background") >= 0.98


def test_amorphous_blobs_have_no_shape(judge):
    images, scenes = _background_only(64, SEED + 2)
    rng = np.random.default_rng(SEED)
    blobs = []
    for img, scene in zip(images.numpy(), scenes):
        noise = ndimage.gaussian_filter(rng.standard_normal((64, 64)), rng.uniform(3.0, 8.0))
        mask = noise > np.quantile(noise, 1 - rng.uniform(0.08, 0.3))
        lab, n = ndimage.label(mask)
        mask = lab == 1 + np.argmax(ndimage.sum_labels(mask, lab, np.arange(1, n + 1)))  # one blob
        alpha = mask.reshape(32, 2, 32, 2).mean((1, 3))
        blobs.append(alpha * np.array(_RGB[scene.colour])[:, None, None] + (1 - alpha) * img)
    readings = judge.read(torch.tensor(np.stack(blobs), dtype=torch.float32))
    assert sum(r["shape"] == "none" for r in readings) / len(readings) >= 0.85
    assert _accuracy(readings, scenes, "colour") >= 0.95  # the colour is still read


def test_heavily_blurred_shapes_have_no_shape(judge):
    g = torch.Generator().manual_seed(SEED + 3)
    scenes = random_scenes(64, g)
    images = render(scenes, g, radius=(0.3, 0.85)).numpy()
    blurred = torch.tensor(ndimage.gaussian_filter(images, (0, 0, 2.0, 2.0), mode="nearest"))
    readings = judge.read(blurred)
    assert sum(r["shape"] == "none" for r in readings) / len(readings) >= 0.9


def test_other_sizes_are_resized(judge):
    g = torch.Generator().manual_seed(SEED + 4)
    scenes = random_scenes(64, g)
    readings = judge.read(render(scenes, g, size=64, radius=(0.3, 0.85)))
    for attr in ("shape", "colour", "background"):
        assert _accuracy(readings, scenes, attr) >= 0.95, attr


def test_shipped_calibration_matches_a_recomputation():
    shipped = geometric.load_calibration()
    assert shipped["seed"] == geometric.CALIBRATION_SEED and shipped["n"] == geometric.CALIBRATION_N
    # a changed constant makes the shipped calibration stale: rerun `python -m trust_unlearn.evaluation.geometric`
    assert shipped["constants"] == geometric._constants()
    fresh = geometric.calibrate(shipped["n"], shipped["seed"])

    def close(a, b, path="cal"):
        if isinstance(a, dict):
            assert set(a) == set(b), path
            for k in a:
                close(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b)):
                close(x, y, f"{path}[{i}]")
        elif isinstance(a, float):
            assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-3), (path, a, b)
        else:
            assert a == b, path

    close(shipped, fresh)


def test_registered_as_a_judge():
    from trust_unlearn.evaluation.judges import JUDGES

    assert JUDGES["geometric"] is GeometricJudge
