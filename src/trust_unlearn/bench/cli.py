"""`trust bench`: methods x tasks x training seeds (x attacks) on the testbed, resumable cell by cell;
`--tune` runs the tuning grid on the dev tasks; `--report-only` rebuilds the outputs from the cells."""
from __future__ import annotations

import json
from pathlib import Path

from trust_unlearn.errors import UserError

HELP = "compare unlearning methods side by side (tuned settings, training seeds, attacks), resumable, with a report"


def add_arguments(p) -> None:
    from trust_unlearn.bench.runner import DEFAULT_ATTACKS, DEFAULT_METHODS
    from trust_unlearn.evaluation.protocol import TEST_TASKS

    p.add_argument("--config", default=None, help="a saved bench.yaml (or bench folder) to re-run; flags below override it")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods, groups (default, baselines, ablations, all) or NAME:KEY=VALUE,... "
                        f"(default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--tasks", nargs="+", default=None, help=f"testbed concepts (default: the test tasks {', '.join(TEST_TASKS)})")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per trained method (default 3)")
    p.add_argument("--attacks", nargs="+", default=None, help=f"attacks, 'all' or 'none' (default: {' '.join(DEFAULT_ATTACKS)})")
    p.add_argument("--attack-seeds", type=int, nargs="+", default=None, help="training seeds whose final model is attacked (default 0)")
    p.add_argument("--attack-prompts", type=int, default=None, help="target prompts per attack (default 16)")
    p.add_argument("--attack-budget", type=int, default=None, help="budget per attack (default: each attack's own)")
    p.add_argument("--sweep", nargs="+", default=None, metavar="KEY=V1,V2",
                   help="add TRUST variants for every combination, e.g. --sweep xi=1.5,2,2.5 beta=0.1,1")
    p.add_argument("--checkpoints", type=int, nargs="+", default=None, help="steps evaluated during training (time to target)")
    p.add_argument("--quick", action="store_true", help="the small profile (<= 10 min on 2 CPUs): one task and seed, "
                                                        "12 steps, a small evaluation, quick attacks")
    p.add_argument("--tune", action="store_true", help="run the tuning grid on the dev tasks and write methods/tuned.yaml "
                                                       "(rule: docs/baselines.md)")
    p.add_argument("--workers", type=int, default=None, help="cells side by side, the cores split between them (default 2)")
    p.add_argument("--out", default=None, help="run folders (default runs/bench)")
    p.add_argument("--results", default=None, help="the cells file (default results/bench/bench.json)")
    p.add_argument("--model", default=None, help="testbed (default) or an exported testbed pipeline")
    p.add_argument("--rerun-stale", action="store_true", help="re-run cells whose code or settings have changed")
    p.add_argument("--report-only", action="store_true", help="run nothing: rebuild results.md/csv and report.html")
    p.add_argument("--confine-attacks", action="store_true", default=None,
                   help="white-box prefixes may not use the concept's attribute words (trust attack --confine)")
    p.add_argument("--readme", action="store_true", help="also rewrite README's headline table from the cells")
    p.add_argument("--json", default=None, help="also write the summary here")


def config_from_args(args):
    from trust_unlearn.bench.runner import BenchConfig, parse_sweep

    cfg = BenchConfig.from_yaml(args.config) if args.config else BenchConfig()
    for key in ("methods", "tasks", "seeds", "attacks", "attack_seeds", "attack_prompts", "attack_budget", "checkpoints",
                "workers", "out", "results", "model", "confine_attacks"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.quick:
        cfg.apply_quick()
        cfg.out = args.out or "runs/bench-quick"
        for key in ("tasks", "seeds", "attack_prompts", "checkpoints"):  # explicit flags win over the profile
            if getattr(args, key) is not None:
                setattr(cfg, key, getattr(args, key))
    if args.sweep is not None:
        cfg.sweep = parse_sweep(args.sweep)
    if args.attacks is not None and [a.lower() for a in args.attacks] == ["none"]:
        cfg.attacks = []
    cfg.rerun_stale = args.rerun_stale or cfg.rerun_stale
    return cfg


def run(args) -> None:
    from trust_unlearn.bench.report import load_cells, update_readme, write_outputs
    from trust_unlearn.cli import print_table, write_json_arg

    if args.tune:
        from trust_unlearn.bench.tuning import RESULTS, run_tuning, write_grid_report

        if args.report_only:
            if not RESULTS.exists():
                raise UserError(f"no tuning results {RESULTS}; run `trust bench --tune` first")
            print(write_grid_report(json.loads(RESULTS.read_text())["cells"]).read_text())
            return
        choices = run_tuning(args.methods, out=args.out or "runs/tuning", workers=args.workers or 2)
        print_table("tuning (dev tasks)", [(m, "incomplete" if not c["choice"] else
                                            f"lr {c['choice']['lr']:.3g}, {c['choice']['steps']} steps: forget "
                                            f"{c['choice']['forget']:.1%}, retain drop {c['choice']['retain_drop']:+.1%}")
                                           for m, c in choices.items()] + [("grid", str(RESULTS))])
        write_json_arg(args.json, choices)
        return
    cfg = config_from_args(args)
    if args.report_only:
        if not cfg.results_path.exists():
            raise UserError(f"no results file {cfg.results_path}; run `trust bench` first (or pass --results FILE)")
        summary = write_outputs(load_cells(cfg.results_path), cfg.results_path.parent)
    else:
        from trust_unlearn.bench.runner import run_bench

        summary = run_bench(cfg)
    print(summary["markdown"])
    if args.readme:
        update_readme(Path("README.md"), summary, cfg.results_path)
    print_table("bench", [("cells", str(cfg.results_path)), ("report", str(cfg.results_path.parent / "report.html"))])
    write_json_arg(args.json, {k: v for k, v in summary.items() if k != "markdown"})
