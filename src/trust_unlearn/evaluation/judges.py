"""Judges decide results: what concept an image shows. Found by name through a registry.

The shapes judge is the testbed's classifier (shape / colour / background heads). The scorer that
drives TRUST's saliency is a different network, so a method cannot game the judge it is graded by.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from trust_unlearn.errors import UserError
from trust_unlearn.testbed import SHIPPED_WEIGHTS
from trust_unlearn.testbed.networks import NONE, Judge

JUDGES: dict[str, type] = {}
# judges that live in their own module (heavy or optional imports): imported on first use, so this
# module imports none of them and they import only `register_judge` from here (no import cycle)
_JUDGE_MODULES = {"nudenet": "trust_unlearn.evaluation.nudenet", "geometric": "trust_unlearn.evaluation.geometric",
                  "geometric-nearest": "trust_unlearn.evaluation.geometric"}


def abstained(reading: dict[str, str]) -> bool:
    """The judge could not read an object: no recognisable shape, or no object at all."""
    return reading["shape"] == NONE or reading["colour"] == NONE


def register_judge(name: str):
    def wrap(cls):
        JUDGES[name] = cls
        return cls

    return wrap


def get_judge(name: str = "shapes", **kwargs):
    if name not in JUDGES and name in _JUDGE_MODULES:
        import importlib

        importlib.import_module(_JUDGE_MODULES[name])
    if name not in JUDGES:
        raise UserError(f"unknown judge {name!r}; choose one of {', '.join(sorted({*JUDGES, *_JUDGE_MODULES}))}")
    return JUDGES[name](**kwargs)


@register_judge("shapes")
class ShapesJudge:
    """Reads shape, colour and background from 32x32 images (other sizes are resized first)."""

    def __init__(self, weights: str | Path | None = None):
        path = Path(weights or SHIPPED_WEIGHTS / "judge.safetensors")
        if not path.exists():
            raise UserError(f"judge weights not found at {path}; run `trust testbed train` or reinstall")
        self.net = Judge().eval()
        self.net.load_state_dict(load_file(path))

    @staticmethod
    def _prepare(images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[-1] != 32:
            images = F.interpolate(images, size=(32, 32), mode="area")
        return images

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 256) -> list[dict[str, str]]:
        """The judge's reading of each image: {'shape': ..., 'colour': ..., 'background': ...}."""
        out = []
        for i in range(0, len(images), batch_size):
            logits = self.net(self._prepare(images[i : i + batch_size]))
            idx = {h: logits[h].argmax(-1).tolist() for h in Judge.heads}
            out += [{h: Judge.heads[h][idx[h][k]] for h in Judge.heads} for k in range(len(idx["shape"]))]
        return out

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self.net.features(self._prepare(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])

