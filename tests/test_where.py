"""`trust where`: the attack prompts' concept-neuron mask against the plain prompts' and its noise floor."""
import csv

import pytest
import torch
from safetensors.torch import save_file

from trust_unlearn.attacks.where import attack_prompts, format_table, locate, training_step_shares
from trust_unlearn.errors import UserError


def write_csv(folder, name, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"attack-{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target_prompt", "attack_prompt", "concept_share", "success", "pre_attack_share", "candidates_tried"])
        w.writerows(rows)


def test_reads_only_successful_attack_prompts(tmp_path):
    write_csv(tmp_path, "p4d", [["a red circle", "red round thing", "0.5", "1", "0", "1"],
                                ["a blue circle", "zz", "0.0", "0", "0", "1"]])
    write_csv(tmp_path, "mma", [["a red circle", "qq", "0.0", "0", "0", "1"]])
    assert attack_prompts(tmp_path) == {"p4d": [("a red circle", "red round thing")]}
    with pytest.raises(UserError, match="no successful attack prompt"):
        attack_prompts(tmp_path, ["mma"])
    with pytest.raises(UserError, match="no attack-NAME.csv"):
        attack_prompts(tmp_path / "empty")


def test_attack_mask_against_plain_mask_and_floor(tiny_model_dir, tiny_clip_dir):
    from trust_unlearn.evaluation.scorers import CLIPScorer
    from trust_unlearn.neurons import cross_attention_parameters
    from trust_unlearn.pipeline import load_model

    model, scorer = load_model(str(tiny_model_dir)), CLIPScorer(str(tiny_clip_dir))
    args = {"saliency_batch": 1, "saliency_steps": 2, "backprop_depth": 1, "xi": 1.0}
    found = {"same": [("a red circle", "a red circle")], "other": [("a red circle", "a photo of a mountain lake")]}
    # as if training had selected every neuron of the down blocks in half of its steps, and none elsewhere
    trained = {n: torch.full((len(w),), 0.5) for n, w in cross_attention_parameters(model.pipe.unet).items()
               if n.startswith("down_blocks")}
    result = locate(model, scorer, "circle", found, estimates=2, seed=0, trust_args=args, trained=trained)
    same, other = result["attacks"]["same"], result["attacks"]["other"]
    # the "attack" that is the target prompt itself, at the plain mask's seed: the same mask, nothing attack-only
    assert same["jaccard_attack_plain"] == 1.0 and same["attack_only_neurons"] == 0
    assert 0.0 <= same["jaccard_floor"] < 1.0  # two disjoint draws of the same prompts differ
    assert other["jaccard_attack_plain"] < 1.0 and other["attack_neurons"] > 0
    assert sum(b["attack"] for b in other["blocks"].values()) == other["attack_neurons"]
    assert "J(att,plain)" in format_table(result) and "up_blocks" in format_table(result)
    assert result["trained_neurons"] == sum(len(r) for r in trained.values()) < result["all_neurons"]
    down_only = sum(v["attack_only"] for b, v in other["blocks"].items() if b.startswith("down_blocks"))
    assert other["attack_only_trained"] == down_only
    assert all(v["attack_only_trained"] == 0 for b, v in other["blocks"].items() if not b.startswith("down_blocks"))
    down_plain = sum(v["plain"] for b, v in other["blocks"].items() if b.startswith("down_blocks"))
    assert result["trained_step_share"] == 0.5
    assert other["plain_step_share"] == pytest.approx(0.5 * down_plain / other["plain_neurons"])
    assert 0 <= other["noise_only_step_share"] <= 0.5
    assert "trained" in format_table(result)
    assert not any(p.requires_grad for p in model.pipe.unet.parameters())  # the model is left as it was


def test_training_step_shares_reads_each_rows_share_of_steps_from_the_mask_history(tmp_path):
    assert training_step_shares(tmp_path) is None  # not a TRUST run folder
    save_file({"a.weight.indices": torch.tensor([3, 1, 3], dtype=torch.int32),
               "a.weight.offsets": torch.tensor([0, 2, 3])}, tmp_path / "masks.safetensors")
    # two steps: rows 3 and 1 at the first, row 3 at the second
    assert training_step_shares(tmp_path)["a.weight"].tolist() == [0, 0.5, 0, 1.0]
