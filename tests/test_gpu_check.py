"""scripts/gpu_check.sh: the CPU dry run of the GPU readiness check, and the SD-1.5 shapes it builds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_script_times_every_method_through_the_engine(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PY": sys.executable}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["trust-cip", "trust-csr", "salun", "esd-x"]
    assert [rows[m]["registered"] for m in rows] == ["trust", "trust", "salun", "esd-x"]
    assert rows["trust-csr"]["options"]["reg"] == "csr" and rows["trust-cip"]["options"]["reg"] == "cip"
    for r in rows.values():
        assert "error" not in r and r["loss_finite"] and r["steps"] == 2 and r["s_per_step"] > 0
    assert rows["trust-cip"]["mask_neurons"] > 0 and rows["trust-csr"]["mask_neurons"] > 0
    # the per-step profile: TRUST's saliency phases, and the phases never sum to more than the step
    assert {"saliency_trajectory", "saliency_backward", "loss_forward"} <= set(rows["trust-cip"]["phase_s"])
    assert sum(rows["trust-cip"]["phase_s"].values()) <= rows["trust-cip"]["s_per_step"] * 1.01
    assert "per-step profile" in proc.stdout
    # SalUn trains the whole UNet; TRUST only attn2 q/k/v rows; ESD-x all of attn2
    assert rows["salun"]["trainable_params"] == result["params"]["unet"]
    assert rows["trust-cip"]["trainable_params"] < rows["esd-x"]["trainable_params"] < rows["salun"]["trainable_params"]
    assert result["mode"].startswith("dry-run") and result["total_s"] < 60
    for name in rows:  # the printed table has one row per method
        assert any(line.startswith(name) for line in proc.stdout.splitlines())


def test_sd15_shapes_match_stable_diffusion_1_5():
    from trust_unlearn.gpu_check import SD15, build_pipeline
    from trust_unlearn.pipeline import cross_attention_layers

    pipe = build_pipeline(SD15, torch.device("meta"))  # shapes only: no memory, no compute
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(pipe.unet) == 859_520_964 and n(pipe.text_encoder) == 123_060_480 and n(pipe.vae) == 83_653_863
    cfg = pipe.unet.config
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280) and cfg.cross_attention_dim == 768
    assert cfg.sample_size == 64 and pipe.vae_scale_factor == 8 and SD15.resolution == 512
    assert len(cross_attention_layers(pipe.unet)) == 16 and pipe.tokenizer.model_max_length == 77


def test_refuses_unknown_methods_and_missing_gpu(capsys):
    from trust_unlearn.gpu_check import main

    assert main(["--dry-run", "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([]) == 2
        assert "--dry-run" in capsys.readouterr().err
    else:  # pragma: no cover - GPU machines
        pytest.skip("a GPU is visible")


def test_tokenizer_falls_back_to_bytes_without_open_clip(monkeypatch):
    import trust_unlearn.clip_vocab as clip_vocab
    from trust_unlearn.errors import UserError
    from trust_unlearn.gpu_check import _tokenizer

    def missing(**_):
        raise UserError("open_clip_torch is not installed")

    monkeypatch.setattr(clip_vocab, "clip_tokenizer", missing)
    tok = _tokenizer(77)
    ids = tok(["a photo of a person"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and max(ids) < 49408
