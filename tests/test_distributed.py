"""Data-parallel unlearning under `accelerate launch` with 2 CPU processes."""
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"]


def test_two_ranks_agree_and_match_one_process(tiny_run_config, tmp_path):
    cfg = tiny_run_config(common={"steps": 3, "batch": 4}, method_args={"saliency_batch": 2})
    config_file = tmp_path / "config.yaml"
    from dataclasses import asdict

    config_file.write_text(yaml.safe_dump(asdict(cfg)))
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    runs = {}
    for name, prefix in (("two", ACCELERATE + ["-m"]), ("one", [sys.executable, "-m"])):
        out = tmp_path / name
        proc = subprocess.run(prefix + ["trust_unlearn.cli", "unlearn", "--config", str(config_file), "--out", str(out),
                                        "--json", str(tmp_path / f"{name}.json")],
                              capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert runs["two"]["world_size"] == 2 and runs["two"]["ranks_agree"] is True
    assert runs["one"]["world_size"] == 1
    masks_one, masks_two = load_file(tmp_path / "one" / "masks.safetensors"), load_file(tmp_path / "two" / "masks.safetensors")
    assert all(torch.equal(masks_one[k], masks_two[k]) for k in masks_one)
    from diffusers import UNet2DConditionModel

    a = UNet2DConditionModel.from_pretrained(tmp_path / "one", subfolder="unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(tmp_path / "two", subfolder="unet").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
