"""The `trust` command line. Bad input ends in one clear message and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from trust_unlearn.errors import UserError

COMMANDS = {}


def command(name: str, help: str):
    def wrap(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return wrap


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 24))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def write_json_arg(path: str | None, data: dict) -> None:
    if path:
        from trust_unlearn.utils import write_json

        write_json(path, data)
        print(f"figures written to {path}")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="testbed", help="pipeline folder, cached hub id, or 'testbed' (default)")
    p.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------------------- generate
def _generate_args(p):
    _model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("-n", type=int, default=16, help="number of images")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (model default)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (model default)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write")


@command("generate", "generate a grid of images for a prompt")
def cmd_generate(args):
    from trust_unlearn.pipeline import generate, load_model, save_grid

    if not args.prompt.strip():
        raise UserError("empty prompt: pass some text with --prompt")
    if args.n < 1:
        raise UserError("-n must be at least 1")
    model = load_model(args.model)
    seeds = [args.seed * 100_000 + k for k in range(args.n)]
    images = generate(model, [args.prompt] * args.n, seeds, guidance_scale=args.guidance, num_inference_steps=args.steps)
    print(f"wrote {save_grid(images, args.out, ncol=min(8, args.n))}")


# --------------------------------------------------------------------------------------- evaluate
def _evaluate_args(p):
    _model_args(p)
    p.add_argument("--concept", default=None, help="e.g. circle, red, 'red circle', 'circle on striped background'")
    p.add_argument("--judge", default="shapes", choices=("shapes", "nudenet"),
                   help="shapes: the testbed world (default); nudenet: nudity rate over --prompts")
    p.add_argument("--prompts", default=None, help="I2P-style CSV (prompt, seed, case_number) for --judge nudenet")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (model default)")
    p.add_argument("--reference", default="testbed", help="model whose retain images FD-judge compares against")
    p.add_argument("--target-seeds", type=int, default=None, help="images per target caption (8)")
    p.add_argument("--retain-seeds", type=int, default=None, help="images per retain scene (24)")
    p.add_argument("--json", default=None, help="also write the figures here")


@command("evaluate", "forget rate, retain accuracy and FD-judge of a model for a concept")
def cmd_evaluate(args):
    from trust_unlearn.evaluation.evaluate import EvalConfig, evaluate, result_rows
    from trust_unlearn.pipeline import load_model
    from trust_unlearn.world.concepts import parse_concept

    if args.judge == "nudenet":
        return _evaluate_nudity(args)
    concept = parse_concept(args.concept)
    model = load_model(args.model)
    reference = model if args.reference == args.model else load_model(args.reference)
    sizes = {k: v for k, v in (("target_seeds", args.target_seeds), ("retain_seeds", args.retain_seeds)) if v is not None}
    result = evaluate(model, concept, EvalConfig(seed=args.seed, num_inference_steps=args.steps, **sizes), reference)
    print_table(f"evaluate {args.model}", result_rows(result))
    write_json_arg(args.json, result)


def _evaluate_nudity(args):
    from trust_unlearn.evaluation.nudity import nudity_report
    from trust_unlearn.pipeline import load_model
    from trust_unlearn.evaluation.prompt_files import read_prompt_file

    if not args.prompts:
        raise UserError("--judge nudenet needs --prompts FILE.csv (columns prompt, seed[, case_number]); see docs/nudity.md")
    records = read_prompt_file(args.prompts)
    result = nudity_report(load_model(args.model), records, num_inference_steps=args.steps, show_progress=True)
    proto = result["protocol"]
    rows = [("prompts", str(result["n"])), ("nudity rate", f"{result['nudity_rate']:.1%} ({result['nude']} images)"),
            ("judge protocol", f"classes {proto.get('classes')}, threshold {proto.get('threshold')}")]
    rows += [(f"  {cls}", str(n)) for cls, n in result["class_counts"].items()]
    print_table(f"nudity: {args.model} on {args.prompts}", rows)
    write_json_arg(args.json, result)


# --------------------------------------------------------------------------------------- testbed
def _testbed_args(p):
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="rebuild the testbed weights from scratch (resumable)")
    t.add_argument("--out", default="runs/testbed", help="weights folder (re-run to resume)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--stages", nargs="+", default=None, help="subset of vae unet unet_refine decoder judge scorer (default: all)")
    t.add_argument("--unet-steps", type=int, default=None)
    t.add_argument("--install", action="store_true", help="copy the result over the shipped weights")
    c = sub.add_parser("check", help="the quality bar: judge accuracy of generated images")
    _model_args(c)
    c.add_argument("--images", type=int, default=32, help="images per in-vocabulary prompt")
    c.add_argument("--record", action="store_true", help="store what held-out phrases evoke beside the weights")
    c.add_argument("--json", default=None)
    j = sub.add_parser("judges", help="each judge's (and the alignment scorer's) accuracy on fresh renders per size, "
                                      "and its abstentions")
    j.add_argument("--judges", nargs="+", default=["shapes", "geometric", "scorer"],
                   help="judges to check; `scorer` is TRUST's alignment scorer read zero-shot (it never grades)")
    j.add_argument("--per-bucket", type=int, default=256, help="renders per size bucket")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--json", default=None)
    e = sub.add_parser("export", help="write a complete pipeline folder plain diffusers can load")
    e.add_argument("out", help="folder to write")
    e.add_argument("--model", default="testbed")


@command("testbed", "train, check or export the embedded shapes testbed")
def cmd_testbed(args):
    if args.action == "train":
        return _testbed_train(args)
    if args.action == "check":
        return _testbed_check(args)
    if args.action == "judges":
        return _testbed_judges(args)
    return _testbed_export(args)


def _testbed_judges(args):
    from trust_unlearn.evaluation.judge_check import check_judge

    results = [check_judge(name, args.per_bucket, args.seed) for name in args.judges]
    for r in results:
        rows = [(f"{bucket} (shape / colour / background / abstained)",
                 " / ".join(f"{v[k]:.1%}" for k in ("shape", "colour", "background", "abstained")))
                for bucket, v in r["buckets"].items()]
        if "abstain_clean" in r:  # the scorer cannot abstain
            rows += [("abstained on clean renders (bar <= 1 %)", f"{r['abstain_clean']:.2%}"),
                     ("abstained on empty backgrounds", f"{r['abstain_empty']:.1%}"),
                     ("abstained on amorphous blobs", f"{r['abstain_blob']:.1%}")]
        rows += [("bar (>= 98 % shape per bucket from 6 px)", "ok" if not r["missed"] else "MISSED: " + ", ".join(r["missed"]))]
        print_table(f"judge {r['judge']}: {r['per_bucket']} fresh renders per bucket", rows)
    write_json_arg(args.json, {"judges": results})
    if any(r["missed"] for r in results):
        raise UserError("a judge missed its bar (see MISSED above)")


def _testbed_train(args):
    import shutil

    from trust_unlearn.testbed import SHIPPED_WEIGHTS
    from trust_unlearn.testbed.train import STAGES, TrainConfig, train_testbed

    cfg = TrainConfig(seed=args.seed)
    if args.stages:
        bad = set(args.stages) - set(STAGES)
        if bad:
            raise UserError(f"unknown stage(s) {sorted(bad)}; choose from {', '.join(STAGES)}")
        cfg.stages = args.stages
    if args.unet_steps:
        cfg.unet_steps = args.unet_steps
    out = train_testbed(args.out, cfg)
    print(f"testbed weights in {out}")
    if args.install:
        SHIPPED_WEIGHTS.mkdir(parents=True, exist_ok=True)
        for src in out.iterdir():
            if src.name == "checkpoints":
                continue
            dst = SHIPPED_WEIGHTS / src.name
            if dst.is_dir():
                shutil.rmtree(dst)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        print(f"installed into {SHIPPED_WEIGHTS}")


def _testbed_check(args):
    from trust_unlearn.pipeline import load_model
    from trust_unlearn.testbed import SHIPPED_WEIGHTS
    from trust_unlearn.testbed.check import check_testbed
    from trust_unlearn.utils import write_json

    model = load_model(args.model)
    result = check_testbed(model, images_per_prompt=args.images, seed=args.seed)
    iv, ho, bars = result["in_vocabulary"], result["heldout"], result["bars"]
    rows = [(f"in-vocabulary {a} (bar {bars[a]:.0%})", f"{iv[a]:.1%}  {'ok' if iv[a] >= bars[a] else 'MISSED'}") for a in bars]
    rows.append(("  shape accuracy per shape", "  ".join(f"{k} {v:.0%}" for k, v in result["shape_accuracy_by_shape"].items())))
    rows += [(f"held-out paraphrase {a} (no bar)", f"{ho[a]:.1%}") for a in bars]
    rows.append(("images (in-vocabulary / held-out)", f"{result['n_in_vocabulary']} / {result['n_heldout']}"))
    print_table(f"testbed check: {args.model} (DDIM {result['num_inference_steps']} steps, guidance {result['guidance_scale']})", rows)
    if args.record:
        target = Path(args.model) if args.model != "testbed" else SHIPPED_WEIGHTS
        write_json(target / "heldout_evoked.json", result["heldout_evoked"])
        print(f"held-out phrase record written to {target / 'heldout_evoked.json'}")
    write_json_arg(args.json, result)
    if not result["passed"]:
        raise UserError("the testbed missed its quality bar (see MISSED above)")


def _testbed_export(args):
    from trust_unlearn.pipeline import export_pipeline, load_model

    model = load_model(args.model)
    print(f"wrote {export_pipeline(model, args.out)} (loads with diffusers.DiffusionPipeline.from_pretrained)")


# --------------------------------------------------------------------------------------- unlearn
def _unlearn_args(p):
    p.add_argument("--config", default=None, help="a saved config.yaml (or run folder) to re-run; flags below override it")
    p.add_argument("--model", default=None, help="pipeline folder, cached hub id, or 'testbed' (default)")
    p.add_argument("--method", default=None, help="unlearning method (default trust)")
    p.add_argument("--robust", action="store_true",
                   help="robust TRUST (--method trust-robust): inner attacks' prompts join the mask and the forget term")
    p.add_argument("--concept", default=None, help="what to forget: a prompt, or a testbed concept ('red circle')")
    p.add_argument("--anchor", default=None, help="what the concept should become (testbed: automatic)")
    p.add_argument("--retain", action="append", default=None, help="a prompt to preserve (repeatable)")
    p.add_argument("--spec", dest="spec_file", default=None, help="YAML with targets / anchors / retains")
    p.add_argument("--scorer", default=None, help="alignment scorer: 'testbed' or a CLIPModel folder / cached hub id")
    p.add_argument("--out", default=None, help="output folder (default runs/unlearn-CONCEPT)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the summary here")
    g = p.add_argument_group("common training options")
    for name, typ in (("steps", int), ("lr", float), ("batch", int), ("seed", int), ("guidance", float), ("cache-images", int)):
        g.add_argument(f"--{name}", type=typ, default=None,
                       help="the most steps: a run stops earlier once forgotten (see --no-stop)" if name == "steps" else None)
    g.add_argument("--probe-every", type=int, default=None,
                   help="read the concept and retain with the alignment scorer every k steps (25; 0 = never)")
    g.add_argument("--no-stop", dest="stop", action="store_const", const=False, default=None,
                   help="run every --steps step, even once the probes read the concept gone and retain intact")
    g.add_argument("--stop", dest="stop", action="store_const", const=True, default=None,
                   help="stop once the probes read the concept gone (the default, except for --robust, whose "
                        "robustness keeps growing after the plain prompts are forgotten, and which does not probe "
                        "unless told to stop)")
    g.add_argument("--stop-patience", type=int, default=None,
                   help="stop once this many probes in a row read the concept gone (2; testbed TRUST: 1, tuned)")
    g.add_argument("--stop-forget", type=float, default=None,
                   help="a probe reads it gone with at most this share of target probes read as the concept "
                        "(0.05; testbed TRUST: 0.13, tuned)")
    g.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None, help="autocast the training step")
    g.add_argument("--gradient-checkpointing", action="store_const", const=True, default=None)
    g.add_argument("--attention-slicing", action="store_const", const=True, default=None)
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="any option of the chosen method's config (repeatable), e.g. --method-arg negative_guidance=1.0")
    p.add_argument("--eval-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the before/after evaluation (repeatable), e.g. --eval-arg seen=false "
                        "--eval-arg target_seeds=4 (default: the protocol's full evaluation)")
    t = p.add_argument_group("TRUST options")
    t.add_argument("--xi", type=float, default=None, help="z-score threshold for concept neurons (2.0)")
    t.add_argument("--beta", type=float, default=None, help="regulariser weight")
    t.add_argument("--alpha", type=float, default=None, help="retain-term weight")
    t.add_argument("--reg", choices=("cip", "csr", "none"), default=None)
    t.add_argument("--objective", choices=("guided", "conditional"), default=None,
                   help="L_prev on the guided prediction, relative (default), or SalUn's conditional eps")
    t.add_argument("--mask-every", type=int, default=None, help="re-estimate the mask every k steps (1; 0 = static)")
    t.add_argument("--saliency-steps", type=int, default=None)
    t.add_argument("--backprop-depth", type=int, default=None)
    t.add_argument("--saliency-batch", type=int, default=None)
    t.add_argument("--saliency-resolution", type=int, default=None, help="pixels of the saliency trajectory (model's)")


_COMMON_FLAGS = ("steps", "lr", "batch", "seed", "guidance", "cache_images", "mixed_precision", "gradient_checkpointing",
                 "attention_slicing", "probe_every", "stop", "stop_patience", "stop_forget")
_TRUST_FLAGS = ("xi", "beta", "alpha", "reg", "objective", "mask_every", "saliency_steps", "backprop_depth", "saliency_batch",
                "saliency_resolution")


def parse_key_values(items: list[str], flag: str = "--method-arg") -> dict:
    """KEY=VALUE pairs; values are read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r}: write KEY=VALUE")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def unlearn_config_from_args(args):
    from trust_unlearn.unlearn import UnlearnConfig

    cfg = UnlearnConfig.from_yaml(args.config) if args.config else UnlearnConfig()
    if args.config and any(getattr(args, k) is not None for k in ("concept", "anchor", "retain", "spec_file")):
        cfg.spec = None  # new prompts: resolve them again
    for key in ("model", "method", "concept", "anchor", "spec_file", "scorer", "checkpoint_every"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.robust:
        if args.method not in (None, "trust", "trust-robust"):
            raise UserError(f"--robust selects --method trust-robust; it cannot be combined with --method {args.method}")
        cfg.method = "trust-robust"
    if args.retain is not None:
        cfg.retain = args.retain
    if args.no_eval:
        cfg.evaluate = False
    cfg.common = {**cfg.common, **{k: getattr(args, k) for k in _COMMON_FLAGS if getattr(args, k) is not None}}
    if args.stop and args.probe_every is None:
        from trust_unlearn.methods.base import CommonConfig

        # the rule reads probes: --stop probes even where the method's settings skip them (trust-robust)
        cfg.common.setdefault("probe_every", CommonConfig.probe_every)
    cfg.method_args = {**cfg.method_args, **{k: getattr(args, k) for k in _TRUST_FLAGS if getattr(args, k) is not None},
                       **parse_key_values(args.method_arg)}
    cfg.eval = {**cfg.eval, **parse_key_values(args.eval_arg, "--eval-arg")}
    if args.out:
        cfg.out = args.out
    elif not args.config:
        slug = "-".join((cfg.concept or Path(cfg.spec_file or "spec").stem).lower().split())
        cfg.out = f"runs/unlearn-{slug}"
    return cfg


@command("unlearn", "make a model forget a concept (TRUST by default) and report before/after")
def cmd_unlearn(args):
    from trust_unlearn.unlearn import run_unlearn

    cfg = unlearn_config_from_args(args)
    if args.config and not args.out and not args.resume and not args.overwrite:
        raise UserError("re-running a saved config needs a new --out (or --overwrite)")
    summary = run_unlearn(cfg, resume=args.resume, overwrite=args.overwrite)
    if summary["rank"] != 0:
        return  # under `accelerate launch`, rank 0 reports
    steps = str(summary["steps"])
    if summary.get("stopped_at"):
        steps += (f" (stopped when forgotten; at most {summary['max_steps']})" if summary["steps"] < summary["max_steps"]
                  else " (the probes read it forgotten at the last step)")
    rows = [("method", summary["method"]), ("concept", summary["concept"]), ("steps", steps),
            ("wall-clock (training)", f"{summary['wall_clock_s']:.1f} s ({summary['seconds_per_step']:.2f} s/step)"),
            ("peak RSS", f"{summary['peak_rss_mb']:.0f} MB")]
    if summary["mean_mask_size"] is not None:
        rows.append(("mean mask size", f"{summary['mean_mask_size']:.1f} of {summary['n_trainable_rows']} rows"))
    for when in ("before", "after"):
        res = summary[when]
        if res:
            text = (f"forget {res['forget_rate']:.1%} (unrecognised {res['unrecognised']:.1%})  "
                    f"retain unseen {res['retain_unseen']:.1%}")
            # figures an evaluation may leave out: seen scenes (seen=false, as `make demo`), look-alikes
            # (an individual concept has none)
            for label, key in ((" / seen", "retain_seen"), ("  look-alike unseen", "lookalike_unseen")):
                if res.get(key) is not None:
                    text += f"{label} {res[key]:.1%}"
            text += f"  FD-judge {res['fd_judge']:.3f}"
            rows.append((when, text))
    rows.append(("output", summary["out"]))
    print_table("unlearn", rows)
    write_json_arg(args.json, summary)


# --------------------------------------------------------------------------------------- apply-delta
def _apply_delta_args(p):
    p.add_argument("--base", default="testbed", help="the model the delta was made from")
    p.add_argument("--delta", required=True, help="delta.safetensors of a run")
    p.add_argument("--out", required=True, help="pipeline folder to write")


@command("apply-delta", "rebuild an unlearned pipeline from its base model and a delta")
def cmd_apply_delta(args):
    from trust_unlearn.delta import apply_delta, read_delta
    from trust_unlearn.pipeline import export_pipeline, load_model

    tensors, meta = read_delta(args.delta)
    model = load_model(args.base)
    apply_delta(model.pipe.unet, tensors)
    print(f"applied {len(tensors)} tensors (made from base {meta.get('base')!r}); wrote {export_pipeline(model, args.out)}")


# --------------------------------------------------------------------------------------- main
ARGUMENTS = {"generate": _generate_args, "evaluate": _evaluate_args, "testbed": _testbed_args,
             "unlearn": _unlearn_args, "apply-delta": _apply_delta_args}
# Commands that live in their own module: it defines HELP, add_arguments(parser) and run(args).
MODULE_COMMANDS = {"attack": "trust_unlearn.attacks.cli", "where": "trust_unlearn.attacks.where",
                   "bench": "trust_unlearn.bench.cli"}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="trust", description="TRUST concept unlearning for diffusion models")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the cores this process may use); "
                             "give each of N parallel jobs cores/N, or they slow each other down many-fold")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        ARGUMENTS[name](p)
        p.set_defaults(func=fn)
    for name, module_name in MODULE_COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # not built yet
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        from trust_unlearn.utils import set_cpu_threads

        set_cpu_threads(args.threads)
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume where supported", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
