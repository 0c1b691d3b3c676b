"""Real-SD shapes and the memory/speed knobs, on tiny models."""
import json
from pathlib import Path

import pytest
import torch

from trust_unlearn.unlearn import run_unlearn


def test_sd2_shaped_v_prediction_pipeline(tiny_run_config, tmp_path):
    from conftest import build_tiny_sd2_pipeline

    folder = tmp_path / "sd2"
    build_tiny_sd2_pipeline().save_pretrained(folder)
    cfg = tiny_run_config(model=str(folder), common={"steps": 2}, method_args={"reg": "csr"})
    summary = run_unlearn(cfg)
    assert summary["steps"] == 2 and summary["mean_mask_size"] > 0
    index = json.loads((Path(cfg.out) / "scheduler" / "scheduler_config.json").read_text())
    assert index["prediction_type"] == "v_prediction"


def test_memory_knobs_run_and_stay_finite(tiny_run_config):
    cfg = tiny_run_config(common={"steps": 2, "mixed_precision": "bf16", "gradient_checkpointing": True,
                                  "attention_slicing": True},
                          method_args={"reg": "csr", "saliency_resolution": 16})
    run_unlearn(cfg)
    rows = [json.loads(x) for x in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_bad_mixed_precision_is_refused(tiny_run_config):
    import pytest

    from trust_unlearn.errors import UserError

    with pytest.raises(UserError, match="mixed_precision"):
        run_unlearn(tiny_run_config(common={"mixed_precision": "fp8"}))


@pytest.mark.parametrize("method,changes", [("trust", (".attn2.to_q", ".attn2.to_k", ".attn2.to_v")),
                                            ("esd-x", (".attn2.",)), ("uce", (".attn2.to_k", ".attn2.to_v"))])
def test_sdxl_shaped_pipeline_with_cross_attention_methods(tiny_run_config, tmp_path, method, changes):
    from conftest import build_tiny_sdxl_pipeline
    from diffusers import UNet2DConditionModel

    folder = tmp_path / "sdxl"
    build_tiny_sdxl_pipeline().save_pretrained(folder)
    cfg = tiny_run_config(model=str(folder), method=method, common={"steps": 2 if method != "uce" else 1})
    if method != "trust":
        cfg.method_args = {"ddim_steps": 2} if method == "esd-x" else {}
    run_unlearn(cfg)
    before = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
    after = UNet2DConditionModel.from_pretrained(cfg.out, subfolder="unet").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(any(c in k for c in changes) for k in changed)
