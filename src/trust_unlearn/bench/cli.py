"""`trust bench`: methods x tasks x attacks on the testbed; tables, bench.json, results.csv, report.html."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from trust_unlearn.errors import UserError

HELP = "compare unlearning methods side by side (methods x tasks x attacks) with an HTML report"


def add_arguments(p) -> None:
    from trust_unlearn.bench.runner import DEFAULT_ATTACKS, DEFAULT_METHODS, DEFAULT_TASKS

    p.add_argument("--config", default=None, help="a saved bench.yaml (or bench folder) to re-run; flags below override it")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods, groups (default, baselines, ablations, all) or NAME:KEY=VALUE,... "
                        f"(default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--tasks", nargs="+", default=None, help=f"testbed concepts (default: {', '.join(DEFAULT_TASKS)})")
    p.add_argument("--attacks", nargs="+", default=None,
                   help=f"attacks, 'all' or 'none' (default: {' '.join(DEFAULT_ATTACKS)})")
    p.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="add TRUST variants for every combination, e.g. --sweep xi=1.5,2,2.5 beta=0.1,1")
    p.add_argument("--quick", action="store_true", help="the small profile (<= 10 min on 2 CPUs): one task, fewer "
                                                        "steps, smaller evaluation, quick attacks")
    p.add_argument("--out", default=None, help="bench folder (default runs/bench or runs/bench-quick)")
    p.add_argument("--model", default=None, help="testbed (default) or an exported testbed pipeline")
    p.add_argument("--steps", type=int, default=None, help="steps of every trained method (profile default)")
    p.add_argument("--checkpoints", type=int, default=None, help="evaluations during training, for time-to-target")
    p.add_argument("--attack-budget", type=int, default=None, help="budget per attack (attack default)")
    p.add_argument("--attack-prompts", type=int, default=None, help="target prompts per attack (attack default)")
    p.add_argument("--attack-curve", action=argparse.BooleanOptionalAction, default=None,
                   help="also attack every checkpoint, for ASR over training wall-clock (on in the full profile)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-isolate", action="store_true", help="run every method in this process (faster start; peak "
                                                             "RSS then includes earlier runs)")
    p.add_argument("--overwrite", action="store_true", help="recompute finished results instead of reusing them")
    p.add_argument("--report-only", action="store_true", help="rebuild report.html / results.csv from bench.json")
    p.add_argument("--json", default=None, help="also write all figures here")


QUICK_TASKS = ["circle"]


def config_from_args(args):
    from trust_unlearn.bench.runner import BenchConfig, parse_sweep

    cfg = BenchConfig.from_yaml(args.config) if args.config else BenchConfig()
    if args.quick:
        cfg.quick = True
        if not args.config and args.tasks is None:
            cfg.tasks = list(QUICK_TASKS)
    for key in ("methods", "tasks", "attacks", "model", "steps", "checkpoints", "attack_budget", "attack_prompts",
                "attack_curve", "seed"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.no_isolate:
        cfg.isolate = False
    if args.sweep is not None:
        cfg.sweep = parse_sweep(args.sweep)
    if args.attacks is not None and [a.lower() for a in args.attacks] == ["none"]:
        cfg.attacks = []
    if args.out:
        cfg.out = args.out
    elif not args.config:
        cfg.out = "runs/bench-quick" if cfg.quick else "runs/bench"
    return cfg


def print_tables(results: dict) -> None:
    from trust_unlearn.bench.runner import format_table, table_rows

    for task, entry in results["tasks"].items():
        head, rows = table_rows(entry, results["plan"]["attacks"])
        print(f"\n{task}\n{format_table(head, rows)}")


def run(args) -> None:
    from trust_unlearn.bench.runner import run_bench, write_results
    from trust_unlearn.cli import print_table, write_json_arg

    if args.report_only:
        folder = Path(args.out or args.config or "runs/bench")
        path = folder / "bench.json" if folder.is_dir() else folder
        if not path.exists():
            raise UserError(f"no bench.json in {folder}; run `trust bench --out {folder}` first")
        results = json.loads(path.read_text())
        write_results(results, path.parent)
    else:
        cfg = config_from_args(args)
        results = run_bench(cfg, overwrite=args.overwrite)
        path = Path(cfg.out).expanduser().resolve() / "bench.json"
    print_tables(results)
    print_table("bench", [("tasks x methods", f"{len(results['tasks'])} x {len(results['plan']['labels'])}"),
                          ("total time", f"{results.get('total_seconds', 0):.0f} s"),
                          ("report", str(path.parent / "report.html")), ("figures", str(path))])
    write_json_arg(args.json, results)
