"""`trust where`: which concept neurons the prompts an attack found light up that the plain prompts do not.

For a model and the prompts of an attack (its `attack-NAME.csv`: the successful rows' found prompts and
the target prompts they were found for), TRUST's saliency -- the gradient of the alignment score of a
short generation with its prompt, per cross-attention neuron -- is estimated for both prompt sets, each
summed over `estimates` independent draws, and turned into a mask by TRUST's z-score rule. Two masks of
the same plain prompts from disjoint draws give the noise floor: an overlap of the attack's mask with the
plain one no lower than the floor says the attack reaches the concept through the same neurons; a lower
one, and the attack-only neurons per UNet block, say where a robust mode must look (docs/method.md). For a
TRUST run folder, the attack-only neurons are also counted against the ones the run selected at some step of
its training (its masks.safetensors), and in what share of the steps: one it never selected is a neuron the
dynamic mask missed; one it did select was edited, but not enough.
"""
from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

import torch

from trust_unlearn.errors import UserError
from trust_unlearn.neurons import concept_neuron_masks, jaccard, mask_indices

HELP = "where the concept survives: concept neurons lit by an attack's prompts vs by the plain prompts, per UNet block"


def attack_prompts(folder: str | Path, attacks: list[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    """{attack: [(target prompt, found prompt), ...]} of the successful rows of each attack-NAME.csv."""
    folder = Path(folder)
    files = sorted(folder.glob("attack-*.csv"))
    if not files:
        raise UserError(f"no attack-NAME.csv in {folder}: run `trust attack --out {folder}` first")
    found = {}
    for f in files:
        name = f.stem.removeprefix("attack-")
        if attacks and name not in attacks:
            continue
        with open(f, newline="") as fh:
            rows = [(r["target_prompt"], r["attack_prompt"]) for r in csv.DictReader(fh) if r["success"] == "1"]
        if rows:
            found[name] = rows
    if not found:
        raise UserError(f"no successful attack prompt in {folder}" + (f" for {', '.join(attacks)}" if attacks else "")
                        + ": nothing to locate (the concept did not survive these attacks)")
    return found


def training_step_shares(model_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """{parameter: per row, the share of the run's steps that selected it} for a TRUST run folder (its mask
    history, masks.safetensors; a row never selected is absent or 0), or None where the model is not one."""
    path = Path(model_dir) / "masks.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    history = load_file(path)
    out = {}
    for name, indices in history.items():
        if name.endswith(".indices"):
            steps = max(1, len(history[name.removesuffix(".indices") + ".offsets"]) - 1)
            out[name.removesuffix(".indices")] = torch.bincount(indices.long()) / steps
    return out


def block_of(param: str) -> str:
    m = re.match(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)", param)
    return m.group(1) if m else param.split(".")[0]


def saliency_mask(model, scorer, concept: str, rows: list[tuple[str, str]], estimates: int, seed: int, trust_args: dict):
    """TRUST's concept-neuron mask of generations from the rows' second prompts, each scored against its first
    (the target prompt: an attack prompt is judged by whether it draws the target, not by its own words):
    z-score selection of the saliency summed over `estimates` draws."""
    from trust_unlearn.concept_spec import ConceptSpec
    from trust_unlearn.methods.base import CommonConfig, RunContext
    from trust_unlearn.methods.trust import TrustConfig

    prompts = list(dict.fromkeys(p for _, p in rows))
    spec = ConceptSpec(name=concept, targets=prompts, anchors=[""], retains=[]).validate()  # no anchor: no loss here
    ctx = RunContext(model, spec, CommonConfig(seed=seed))
    ctx.scorer = scorer
    cfg = TrustConfig(**trust_args)
    method = _scored_against()(ctx, cfg, {p: t for t, p in rows})
    total = None
    for _ in range(estimates):
        grads = method.saliency_gradients()
        total = grads if total is None else {n: total[n] + g for n, g in grads.items()}
    model.pipe.unet.requires_grad_(False)
    return concept_neuron_masks(total, cfg.xi)


@functools.lru_cache(maxsize=1)
def _scored_against():
    """TRUST, imported on first use (the CLI builds its parser from this module)."""
    from trust_unlearn.methods.trust import Trust

    class ScoredAgainst(Trust):
        """TRUST's saliency, with each generation scored against a given prompt instead of its own."""

        def __init__(self, ctx, cfg, score_prompt: dict[str, str]):
            super().__init__(ctx, cfg)
            self.score_prompt = score_prompt

        def _score(self, images, prompts):
            return self.ctx.scorer.score(images, [self.score_prompt.get(p, p) for p in prompts]).mean()

    return ScoredAgainst


def _per_block(mask) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, i in mask_indices(mask):
        out[block_of(name)] = out.get(block_of(name), 0) + 1
    return out


def _step_shares(model, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per cross-attention parameter of the model, per row, the share of training steps that selected it."""
    from trust_unlearn.neurons import cross_attention_parameters

    share = {n: torch.zeros(len(w)) for n, w in cross_attention_parameters(model.pipe.unet).items()}
    for n, steps in trained.items():
        if n in share:
            share[n][: len(steps)] = steps
    return share


def _mean_share(share: dict[str, torch.Tensor], mask) -> float:
    """The mean share of training steps that selected the mask's neurons (a neuron never selected counts 0)."""
    values = torch.cat([share[n][m] for n, m in mask.items()])
    return float(values.mean()) if len(values) else 0.0


def locate(model, scorer, concept: str, found: dict[str, list[tuple[str, str]]], estimates: int = 4, seed: int = 0,
           trust_args: dict | None = None, trained: dict[str, torch.Tensor] | None = None) -> dict:
    """Per attack: its mask vs the plain prompts' mask (and the plain prompts' noise floor), overall and per block;
    with `trained` (training_step_shares), how many attack-only neurons the run's training ever selected, and the
    mean share of its steps that selected the plain, attack-only and noise-only neurons."""
    trust_args = trust_args or {}
    result = {"concept": concept, "estimates": estimates, "attacks": {}}
    share = None if trained is None else _step_shares(model, trained)
    if share is not None:
        selected = torch.cat([v[v > 0] for v in share.values()])
        result.update(trained_neurons=len(selected), all_neurons=sum(len(v) for v in share.values()),
                      trained_step_share=float(selected.mean()) if len(selected) else 0.0)
    for name, rows in found.items():
        plain_rows = [(t, t) for t, _ in rows]
        plain = saliency_mask(model, scorer, concept, plain_rows, estimates, seed, trust_args)
        plain_again = saliency_mask(model, scorer, concept, plain_rows, estimates, seed + 1, trust_args)
        attacked = saliency_mask(model, scorer, concept, rows, estimates, seed, trust_args)
        only = {n: attacked[n] & ~(plain[n] | plain_again[n]) for n in attacked}
        blocks = sorted(set(_per_block(plain)) | set(_per_block(attacked)))
        result["attacks"][name] = {
            "prompts": len(rows), "plain_neurons": len(mask_indices(plain)), "attack_neurons": len(mask_indices(attacked)),
            "jaccard_attack_plain": jaccard(attacked, plain), "jaccard_floor": jaccard(plain, plain_again),
            "attack_only_neurons": len(mask_indices(only)),
            "blocks": {b: {"plain": _per_block(plain).get(b, 0), "attack": _per_block(attacked).get(b, 0),
                           "attack_only": _per_block(only).get(b, 0)} for b in blocks},
        }
        if share is not None:
            only_trained = _per_block({n: only[n] & (share[n] > 0) for n in only})
            # the plain estimate's own noise (neurons only its second draw selects): the attack-only ones' reference
            noise_only = {n: plain_again[n] & ~plain[n] for n in plain}
            result["attacks"][name].update(attack_only_trained=sum(only_trained.values()),
                                           plain_step_share=_mean_share(share, plain),
                                           attack_only_step_share=_mean_share(share, only),
                                           noise_only_step_share=_mean_share(share, noise_only))
            for b, v in result["attacks"][name]["blocks"].items():
                v["attack_only_trained"] = only_trained.get(b, 0)
    return result


def format_table(result: dict) -> str:
    has_trained = "trained_neurons" in result
    lines = [f"where: concept {result['concept']!r}, saliency summed over {result['estimates']} draws per mask"]
    if has_trained:
        trained, total = result["trained_neurons"], result["all_neurons"]
        lines += [f"the run's training selected {trained} of {total} neurons at some step ({trained / total:.0%}), each "
                  f"in {result['trained_step_share']:.0%} of the steps on average",
                  "trained: the attack-only neurons among them; steps: the mean share of the training steps that "
                  "selected the plain / attack-only / noise-only neurons (noise-only: selected by the floor's second "
                  "draw alone)"]
    lines.append(f"{'attack':<16}{'prompts':>8}{'plain':>8}{'attack':>8}{'J(att,plain)':>14}{'J floor':>9}{'attack-only':>13}"
                 + (f"{'trained':>9}{'steps':>16}" if has_trained else ""))
    for name, r in result["attacks"].items():
        lines.append(f"{name:<16}{r['prompts']:>8}{r['plain_neurons']:>8}{r['attack_neurons']:>8}"
                     f"{r['jaccard_attack_plain']:>14.2f}{r['jaccard_floor']:>9.2f}{r['attack_only_neurons']:>13}"
                     + (f"{r['attack_only_trained']:>9}{r['plain_step_share']:>6.0%}/{r['attack_only_step_share']:.0%}"
                        f"/{r['noise_only_step_share']:.0%}" if has_trained else ""))
        lines += [f"    {b:<14} plain {v['plain']:>4}  attack {v['attack']:>4}  attack-only {v['attack_only']:>4}"
                  + (f"  trained {v['attack_only_trained']:>4}" if has_trained else "") for b, v in r["blocks"].items()]
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--model", default="testbed", help="the model whose neurons are located (e.g. an unlearned run folder)")
    p.add_argument("--concept", required=True, help="the concept the attack was after (e.g. circle)")
    p.add_argument("--attack-dir", required=True, help="a `trust attack --out` folder (its attack-NAME.csv files)")
    p.add_argument("--attack", nargs="+", default=None, help="only these attacks (default: every CSV in the folder)")
    p.add_argument("--estimates", type=int, default=4, help="saliency draws summed per mask (4)")
    p.add_argument("--xi", type=float, default=None, help="z-score threshold (TRUST's default)")
    p.add_argument("--scorer", default=None, help="alignment scorer (testbed default; a CLIP folder on real SD)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")


def run(args) -> None:
    from trust_unlearn.cli import write_json_arg
    from trust_unlearn.evaluation.scorers import load_scorer
    from trust_unlearn.pipeline import load_model

    if args.estimates < 1:
        raise UserError("--estimates must be at least 1")
    found = attack_prompts(args.attack_dir, args.attack)
    model = load_model(args.model)
    scorer = load_scorer(args.scorer, model.is_testbed)
    with torch.enable_grad():
        result = locate(model, scorer, args.concept, found, args.estimates, args.seed,
                        {} if args.xi is None else {"xi": args.xi}, training_step_shares(args.model))
    print(format_table(result))
    write_json_arg(args.json, result)
