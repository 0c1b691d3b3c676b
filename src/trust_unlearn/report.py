"""What a person looks at after a run: a before/after image grid and curves over steps."""
from __future__ import annotations

from pathlib import Path

import torch

from trust_unlearn.pipeline import save_grid
from trust_unlearn.evaluation.judges import abstained
from trust_unlearn.testbed.networks import NONE
from trust_unlearn.utils import write_json


def reading_caption(reading: dict) -> str:
    """Two short lines for a judge's reading; an abstention ("none") is marked in red."""
    if abstained(reading):
        return f"!NONE {'' if reading['colour'] == NONE else reading['colour']}\n!{reading['background']}"
    return f"{reading['colour']} {reading['shape']}\n{reading['background']}"


def before_after_grid(before: torch.Tensor, after: torch.Tensor, prompts: list[str], path: Path,
                      readings: tuple[list[dict], list[dict]] | None = None) -> Path:
    """Per prompt one row: its images by the original model (left) | the unlearned one (right), with the
    judge's reading under every image when `readings` (before, after) are given."""
    per = len(before) // len(prompts)
    gap = torch.ones(1, *before.shape[1:])
    rows, captions = [], []
    for i in range(len(prompts)):
        rows += [before[i * per : (i + 1) * per], gap, after[i * per : (i + 1) * per]]
        if readings:
            sl = slice(i * per, (i + 1) * per)
            captions += [reading_caption(r) for r in readings[0][sl]] + [""] + [reading_caption(r) for r in readings[1][sl]]
    labels = [f"{p[:38]}" for p in prompts]
    return save_grid(torch.cat(rows), path, ncol=2 * per + 1, labels=labels, scale=4, captions=captions or None,
                     headers={0: "original", per + 1: "unlearned"})


def curves(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    probed = [r for r in rows if "probe" in r]
    fig, axes = plt.subplots(1, 4 if probed else 3, figsize=(17 if probed else 13, 3.4))
    plotted = [key for key in ("loss", "forget_loss", "retain_loss", "reg_loss") if any(key in r for r in rows)]
    for key in plotted:
        axes[0].plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_title("losses")
    if plotted:
        axes[0].legend(fontsize=7)
    if any("mask_size" in r for r in rows):
        axes[1].plot(steps, [r.get("mask_size", float("nan")) for r in rows])
        axes[2].plot(steps, [r.get("jaccard_prev", float("nan")) for r in rows], label="vs previous mask")
        axes[2].plot(steps, [r.get("jaccard_first", float("nan")) for r in rows], label="vs first mask")
        floor = [r for r in rows if "jaccard_floor" in r]
        if floor:
            axes[2].plot([r["step"] for r in floor], [r["jaccard_floor"] for r in floor], "k.",
                         label="two estimates, same weights (noise floor)")
        axes[2].set_ylim(0, 1.05)
        axes[2].legend(fontsize=7)
    axes[1].set_title("concept neurons (mask size)")
    axes[2].set_title("mask drift (Jaccard)")
    if probed:
        x = [r["step"] + 1 for r in probed]
        axes[3].plot(x, [r["probe"]["present"] for r in probed], "o-", label="concept read in target probes")
        axes[3].plot(x, [r["probe"].get("retain_drift", 0.0) for r in probed], "s-", label="retain alignment drift")
        stops = [r["step"] + 1 for r in probed if r.get("stopped")]
        for step in stops:
            axes[3].axvline(step, color="k", linestyle=":", label="stopped")
        axes[3].set_title("stopping rule (alignment scorer)")
        axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(folder: Path, summary: dict, rows: list[dict], before: torch.Tensor, after: torch.Tensor, prompts: list[str],
                 readings: tuple[list[dict], list[dict]] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "summary.json", summary)
    before_after_grid(before, after, prompts, folder / "before_after.png", readings)
    curves(rows, folder / "curves.png")
