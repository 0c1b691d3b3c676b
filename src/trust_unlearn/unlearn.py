"""`trust unlearn`: run an unlearning method on a pipeline, resumable, and leave a complete report.

The output folder (written atomically, never inside the input model) holds:
  a complete diffusers pipeline (model_index.json, unet/, ...)  -> DiffusionPipeline.from_pretrained
  delta.safetensors   only the changed UNet tensors (rebuild with `trust apply-delta`)
  masks.safetensors   per step, per layer, the selected neuron rows (indices + offsets)
  config.yaml         the resolved run config (re-run it with `trust unlearn --config`)
  log.jsonl           per step: losses, mask size, Jaccard to previous/first mask, seconds, peak RSS
  report/             summary.json, before/after image grid, curves over steps
While running, state lives in a sibling `.NAME.partial/` folder; `--resume` continues from it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from trust_unlearn.concept_spec import ConceptSpec, resolve_spec
from trust_unlearn.delta import changed_tensors, write_delta
from trust_unlearn.errors import UserError
from trust_unlearn.methods import get_method, tuned_settings
from trust_unlearn.methods.base import CommonConfig, RunContext
from trust_unlearn.neurons import jaccard, mask_size, per_layer_sizes
from trust_unlearn.pipeline import LoadedModel, generate, load_model, save_pipeline
from trust_unlearn.evaluation.scorers import load_scorer
from trust_unlearn.stopping import StoppingRule
from trust_unlearn.testbed import SHIPPED_WEIGHTS
from trust_unlearn.utils import atomic_dir, load_checkpoint, peak_rss_mb, progress, save_checkpoint, write_json


@dataclass
class UnlearnConfig:
    """One typed config per run; saved as config.yaml beside everything the run produced."""

    model: str = "testbed"
    method: str = "trust"
    concept: str | None = None
    anchor: str | None = None
    retain: list[str] = field(default_factory=list)
    spec_file: str | None = None
    scorer: str | None = None
    out: str = "runs/unlearn"
    checkpoint_every: int = 25
    evaluate: bool = True
    eval: dict = field(default_factory=dict)  # EvalConfig options of the before/after evaluation (the protocol's by default)
    common: dict = field(default_factory=dict)
    method_args: dict = field(default_factory=dict)
    spec: dict | None = None  # resolved prompts (filled in by the run)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "UnlearnConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.yaml"
        if not path.exists():
            raise UserError(f"config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"config {path} has unknown keys {sorted(unknown)}")
        return cls(**data)


def _typed(cls, values: dict, what: str):
    """cls(**values), each value checked against (and converted to) its field's declared type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise UserError(f"unknown {what} option(s) {sorted(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(**{k: _as_declared(v, hints[k], f"{what} option {k}") for k, v in values.items()})


def _as_declared(value, hint, name: str):
    """`value` as the scalar type `hint` declares (float, int, bool, str, or one of them | None); other
    hints pass through. YAML reads 1e6 as a string and 3 as an int: both are fine for a float option."""
    allowed = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]
    if value is None and len(allowed) < len(typing.get_args(hint)):
        return None
    if not all(a in (float, int, bool, str) for a in allowed):
        return value
    for a in allowed:
        if isinstance(value, a) and not (a is int and isinstance(value, bool)):
            return value
    for a in allowed:
        if a is float and not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
        if a is int and isinstance(value, float) and value.is_integer():
            return int(value)
    kinds = {float: ("a number", "0.5"), int: ("a whole number", "2"), bool: ("true or false", "true"), str: ("text", "text")}
    expected = " or ".join(kinds[a][0] for a in allowed)
    raise UserError(f"{name}={value!r} must be {expected}: write e.g. {name.split()[-1]}={kinds[allowed[0]][1]}")


def _eval_config(values: dict):
    from trust_unlearn.evaluation.evaluate import EvalConfig

    return _typed(EvalConfig, values, "evaluation")


def _check_out(out: Path, model: str, overwrite: bool, resume: bool) -> None:
    model_dir = SHIPPED_WEIGHTS if model == "testbed" else Path(model).expanduser()
    if model_dir.exists():
        m = model_dir.resolve()
        if out == m or m in out.parents or out in m.parents:
            raise UserError(f"--out {out} overlaps the input model {m}; write the result somewhere else")
    if out.exists() and not (overwrite or resume):
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out")


class _History:
    """Mask history, compact: per parameter, the selected row indices of every step plus offsets."""

    def __init__(self, names: list[str]):
        self.names = names
        self.steps: list[dict[str, torch.Tensor]] = []

    def append(self, mask) -> None:
        self.steps.append({n: mask[n].nonzero().flatten().to(torch.int32) for n in self.names})

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for n in self.names:
            parts = [s[n] for s in self.steps]
            out[f"{n}.indices"] = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)
            out[f"{n}.offsets"] = torch.tensor([0] + [len(p) for p in parts], dtype=torch.int64).cumsum(0)
        return out


def _grid_prompts(spec: ConceptSpec, n: int = 4) -> list[str]:
    return spec.targets[:n] + spec.retains[:n]


def _grid_images(model: LoadedModel, prompts: list[str], steps: int | None, seeds_per_prompt: int = 6) -> torch.Tensor:
    reps = [p for p in prompts for _ in range(seeds_per_prompt)]
    return generate(model, reps, [k % seeds_per_prompt for k in range(len(reps))], num_inference_steps=steps, desc="grid")


def run_unlearn(cfg: UnlearnConfig, resume: bool = False, overwrite: bool = False, on_step=None, on_start=None,
                before: dict | None = None) -> dict:
    """Run, resumably, and write the output folder. `on_step(k)` is called after each step (tests);
    `on_start(ctx, method)` once the method is built, before any image is cached (bench); `before` is the
    original model's evaluation under `cfg.eval` when the caller has it already (bench: one per task)."""
    out = Path(cfg.out).expanduser().resolve()
    _check_out(out, cfg.model, overwrite, resume)
    _typed(CommonConfig, cfg.common, "common")  # unknown options fail before anything loads
    method_cls = get_method(cfg.method)
    method_cfg = _typed(method_cls.config_cls, cfg.method_args, cfg.method)
    eval_cfg = _eval_config(cfg.eval)
    if not (cfg.spec or cfg.spec_file or (cfg.concept or "").strip()):
        raise UserError("empty concept: pass --concept TEXT (e.g. circle, 'red circle') or --spec FILE.yaml")
    model = load_model(cfg.model)
    # the method's tuned (testbed) or published (SD) settings, under what the run says explicitly
    tuned = tuned_settings(cfg.method, asdict(method_cfg), model.is_testbed)
    method_cfg = _typed(method_cls.config_cls, {**tuned["method_args"], **cfg.method_args}, cfg.method)
    common = _typed(CommonConfig, {**tuned["common"], **cfg.common}, "common").validate()
    accelerator = _accelerator()
    is_main = accelerator.is_main_process
    model.pipe.to(accelerator.device)
    common.apply_memory_knobs(model.pipe)
    spec = ConceptSpec(**cfg.spec).validate() if cfg.spec else resolve_spec(
        cfg.concept, cfg.anchor, cfg.retain, cfg.spec_file, model.is_testbed)
    cfg.spec = spec.to_dict()
    cfg.common, cfg.method_args, cfg.eval = asdict(common), asdict(method_cfg), asdict(eval_cfg)
    world = None
    if model.is_testbed and spec.world_concept:
        from trust_unlearn.world.concepts import parse_concept

        world = parse_concept(spec.world_concept)

    partial = out.with_name(f".{out.name}.partial")
    ckpt_path = partial / "checkpoint.pt"
    if is_main:
        if not resume and partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    accelerator.wait_for_everyone()

    ctx = RunContext(model, spec, common)
    ctx.rank, ctx.world = accelerator.process_index, accelerator.num_processes
    _check_divisible(ctx.world, common.batch, method_cfg)
    needs_scorer = getattr(method_cls, "needs_scorer", False)
    ctx.scorer = load_scorer(cfg.scorer, model.is_testbed) if needs_scorer or cfg.scorer else None
    method = method_cls(ctx, method_cfg)
    trainable = method.trainable()
    ctx.freeze_original(trainable)
    # data parallel: mean gradient over ranks, unless the method already averages before it scales them
    if ctx.world > 1 and hasattr(method, "optimizer") and not getattr(method, "averages_gradients", False):
        method.optimizer.register_step_pre_hook(lambda *_: ctx.average_gradients(trainable.values()))
    if on_start is not None:
        on_start(ctx, method)
    history = _History(list(trainable))
    rule = None
    if common.probe_every and ctx.scorer is not None:
        rule = StoppingRule(ctx)
    if ctx.scorer is not None:
        # the scorer keeps each text's features from the batch it first saw: the probes' texts go first, in
        # the probes' batches, whether or not this run probes, so that probing never changes what TRUST reads
        for texts in (rule or StoppingRule(ctx)).texts():
            ctx.scorer.prepare_texts(texts)

    grid_prompts = _grid_prompts(spec)
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(state["params"][name])
        method.load_state_dict(state["method"])
        ctx.rng.set_state(state["rng"])
        history.steps = state["history"]
        first_mask, prev_mask, start = state["first_mask"], state["prev_mask"], int(state["step"])
        ctx.load_cache_tensors(load_file(partial / "cache.safetensors"))
        before = json.loads((partial / "before.json").read_text())
        if rule is not None:
            rule.reference, rule.streak = state["probe_reference"], state.get("probe_streak", 0)
        print(f"[unlearn] resuming {out.name} at step {start}/{common.steps}")
    else:
        if resume:
            print(f"[unlearn] nothing to resume in {partial}; starting fresh")
        before = dict(before or {})
        if is_main:
            if cfg.evaluate and world is not None and not before:
                from trust_unlearn.evaluation.evaluate import evaluate

                before = evaluate(model, world, eval_cfg, reference=model)
            save_file({"grid": _grid_images(model, grid_prompts, ctx.common.cache_steps)}, partial / "before_grid.safetensors")
            write_json(partial / "before.json", before)
        ctx.cache_original_images()  # deterministic: every rank holds the same images
        if rule is not None:
            rule.calibrate()  # every rank reads the same original: all of them stop at the same step
            if not rule.usable:
                print(f"[unlearn] the stopping rule is off: the scorer reads the concept in only "
                      f"{rule.reference['present']:.0%} of the original's probe images (needs >= 50 %)")
        if is_main:
            save_file({k: v.contiguous() for k, v in ctx.cache_tensors().items()}, partial / "cache.safetensors")
            (partial / "log.jsonl").write_text("")
        first_mask = prev_mask = None
        start = 0
    accelerator.wait_for_everyone()

    log_path = partial / "log.jsonl"
    if is_main:
        lines = log_path.read_text().splitlines()[:start]
        log_path.write_text("".join(line + "\n" for line in lines))
    with (log_path.open("a") if is_main else open(os.devnull, "w")) as log_file:
        bar = progress(range(start, common.steps), desc=f"unlearn {cfg.method}", initial=start, total=common.steps,
                       leave=True, disable=not is_main)
        for k in bar:
            t0 = time.perf_counter()
            with common.autocast(ctx.device):
                row = method.step(k)
            mask = getattr(method, "mask", None)
            if mask is not None:
                first_mask = first_mask if first_mask is not None else mask
                row.update(mask_size=mask_size(mask), mask_layers=per_layer_sizes(mask),
                           jaccard_prev=jaccard(mask, prev_mask) if prev_mask is not None else 1.0,
                           jaccard_first=jaccard(mask, first_mask))
                history.append(mask)
                prev_mask = mask
            stop = False
            if rule is not None and (k + 1) % common.probe_every == 0:
                with ctx.timer("probe"):
                    row["probe"] = rule.probe()
                stop = row["stopped"] = common.stop and row["probe"]["stop"]
            phases = ctx.timer.lap()
            row.update(step=k, seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb())
            if phases:
                row["phases"] = {**phases, "other": max(0.0, row["seconds"] - sum(phases.values()))}
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            bar.set_postfix(loss=f"{row.get('loss', 0):.4f}", mask=row.get("mask_size", "-"))
            if is_main and (k + 1) % cfg.checkpoint_every == 0 and k + 1 < common.steps:
                save_checkpoint(ckpt_path, {
                    "params": {n: p.detach().clone() for n, p in trainable.items()}, "method": method.state_dict(),
                    "rng": ctx.rng.get_state(), "history": history.steps, "first_mask": first_mask,
                    "prev_mask": prev_mask, "step": k + 1, "probe_reference": rule and rule.reference,
                    "probe_streak": rule.streak if rule else 0,
                })
            if on_step is not None:
                on_step(k)
            if stop:
                print(f"[unlearn] stopped at step {k + 1}: {common.stop_patience} probe(s) in a row read the concept "
                      f"gone (last: {row['probe']['present']:.0%} of the probe images, retain drift "
                      f"{row['probe']['retain_drift']:.1%})")
                break
    agree = _ranks_agree(accelerator, trainable, history)
    summary = {"rank": ctx.rank, "world_size": ctx.world, "ranks_agree": agree}
    if is_main:
        summary.update(_finish(cfg, model, ctx, world, history, partial, out, before, grid_prompts, summary, rule))
    accelerator.wait_for_everyone()
    return summary


def phase_means(rows: list[dict]) -> dict[str, float]:
    """Mean seconds per step of every profiled phase (a phase a step skipped counts 0 there)."""
    timed = [r["phases"] for r in rows if "phases" in r]
    names = dict.fromkeys(name for phases in timed for name in phases)
    return {name: sum(p.get(name, 0.0) for p in timed) / len(timed) for name in names}


def _accelerator():
    """accelerate's view of this process: one process, or one rank of `accelerate launch`."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def _check_divisible(world: int, batch: int, method_cfg) -> None:
    sizes = {"batch": batch, **{k: getattr(method_cfg, k) for k in ("saliency_batch", "csr_batch") if hasattr(method_cfg, k)}}
    bad = {k: v for k, v in sizes.items() if v % world}
    if bad:
        raise UserError(f"with {world} processes every batch size must divide evenly: {bad}; use multiples of {world}")


def _ranks_agree(accelerator, trainable, history) -> bool:
    """Data-parallel ranks must end with identical weights and masks; checked, and recorded."""
    if accelerator.num_processes == 1:
        return True
    from accelerate.utils import gather_object

    h = hashlib.sha256()
    for name, p in trainable.items():
        h.update(p.detach().cpu().numpy().tobytes())
    for step in history.steps:
        for name in history.names:
            h.update(step[name].numpy().tobytes())
    digests = gather_object([h.hexdigest()])
    return len(set(digests)) == 1


def _finish(cfg, model, ctx, world, history, partial, out, before, grid_prompts, parallel: dict,
            rule: StoppingRule | None) -> dict:
    from trust_unlearn.report import write_report

    rows = [json.loads(line) for line in (partial / "log.jsonl").read_text().splitlines()]
    after = {}
    if cfg.evaluate and world is not None:
        from trust_unlearn.evaluation.evaluate import evaluate

        after = evaluate(model, world, _eval_config(cfg.eval), reference=load_model(cfg.model))
    after_grid = _grid_images(model, grid_prompts, ctx.common.cache_steps)
    before_grid = load_file(partial / "before_grid.safetensors")["grid"]
    masks = [r["mask_size"] for r in rows if "mask_size" in r]
    probes = [{"step": r["step"] + 1, **r["probe"]} for r in rows if "probe" in r]
    floors = [r["jaccard_floor"] for r in rows if "jaccard_floor" in r]
    drifts = [r["jaccard_prev"] for r in rows[1:] if r.get("mask_updated")]
    summary = {
        "method": cfg.method, "concept": ctx.spec.name, "model": cfg.model, "steps": len(rows),
        "wall_clock_s": sum(r["seconds"] for r in rows), "seconds_per_step": sum(r["seconds"] for r in rows) / max(1, len(rows)),
        "peak_rss_mb": peak_rss_mb(), "mean_mask_size": sum(masks) / len(masks) if masks else None,
        "n_trainable_rows": sum(p.shape[0] for p in ctx.original.values()),
        "before": {k: v for k, v in before.items() if not k.startswith("_")}, "after": after,
        "world_size": parallel["world_size"], "ranks_agree": parallel["ranks_agree"],
        "max_steps": ctx.common.steps, "stopped_at": next((r["step"] + 1 for r in rows if r.get("stopped")), None), "probe_before": rule and rule.reference, "probes": probes,
        "phase_seconds": phase_means(rows),
        "mask_jaccard_step": sum(drifts) / len(drifts) if drifts else None,
        "mask_jaccard_floor": sum(floors) / len(floors) if floors else None,
    }
    with atomic_dir(out) as tmp:
        save_pipeline(model, tmp)
        # the delta holds UNet tensors only; a text-encoder method (advunlearn) lives in the saved text_encoder/
        unet_names = set(model.pipe.unet.state_dict())
        unet_original = {n: t for n, t in ctx.original.items() if n in unet_names}
        write_delta(tmp / "delta.safetensors", changed_tensors(unet_original, model.pipe.unet), base=cfg.model)
        save_file(history.tensors(), tmp / "masks.safetensors", metadata={"steps": str(len(history.steps))})
        (tmp / "config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        shutil.copy2(partial / "log.jsonl", tmp / "log.jsonl")
        readings = None
        if world is not None:
            from trust_unlearn.evaluation.judges import get_judge

            judge = get_judge("shapes")
            readings = (judge.read(before_grid), judge.read(after_grid))
        write_report(tmp / "report", summary, rows, before_grid, after_grid, grid_prompts, readings)
    shutil.rmtree(partial, ignore_errors=True)
    summary["out"] = str(out)
    return summary
