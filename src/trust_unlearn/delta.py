"""A delta: only the UNet tensors an unlearning run changed, to rebuild the result from its base."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trust_unlearn.errors import UserError

PREFIX = "unet."


def changed_tensors(original: dict[str, torch.Tensor], unet) -> dict[str, torch.Tensor]:
    state = unet.state_dict()
    return {PREFIX + n: state[n].detach().contiguous().clone() for n, t in original.items() if not torch.equal(state[n], t)}


def write_delta(path: str | Path, tensors: dict[str, torch.Tensor], base: str) -> None:
    save_file(tensors, str(path), metadata={"base": base, "format": "trust-unlearn delta v1"})


def read_delta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"delta file {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "trust-unlearn delta v1":
            raise UserError(f"{path} is not a trust-unlearn delta")
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def apply_delta(unet, tensors: dict[str, torch.Tensor]) -> None:
    state = unet.state_dict()
    for key, value in tensors.items():
        name = key[len(PREFIX):]
        if name not in state or state[name].shape != value.shape:
            raise UserError(f"delta tensor {name} does not fit this base model; apply it to the model it was made from")
        with torch.no_grad():
            state[name].copy_(value)
