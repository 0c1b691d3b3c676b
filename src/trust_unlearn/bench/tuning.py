"""One tuning budget for every trained method (`trust bench --tune`), on the dev tasks only.

The grid, the same for each method: three learning rates around its reference default (x 1/3, 1, 3) x
training length 100 / 200 / 400 steps (one 400-step run per learning rate, evaluated at steps 100 and
200 on the way; a method whose schedule follows the run's length -- AdvUnlearn's warm-up is a fifth of it --
gets one run per length, as a checkpoint of a longer run is not a run of that length), on every dev task,
training seed 0, the stopping rule off. If the chosen learning rate lies on the grid's edge, one more learning
rate a factor 3 beyond it is run and the choice repeated (once), so no method is held back by where its
reference default happened to sit. Every grid point is
graded with the protocol's checkpoint evaluation (target captions and unseen retain scenes, evaluation
seeds). The selection rule (declared in docs/baselines.md before the grid ran): among the settings whose
mean unseen-retain drop over the dev tasks is <= 3 points, the lowest mean forget rate, ties to the
shorter mean training wall-clock; if none qualifies, the best mean (forget + retain drop) -- i.e. the
largest forget reduction net of the retain lost.

The cells go to results/tuning/tuning.json (resumable like the bench); the choice to methods/tuned.yaml.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import yaml

from trust_unlearn.bench.cells import RETAIN_SLACK, CellStore
from trust_unlearn.bench.runner import CHECKPOINT_EVAL, SALUN, BenchConfig, plan, run_cells
from trust_unlearn.errors import UserError
from trust_unlearn.evaluation.protocol import DEV_TASKS
from trust_unlearn.methods import TUNED_PATH
from trust_unlearn.utils import write_json

TUNED_METHODS = ("trust", "esd-x", SALUN, "esd-u", "trust:reg=csr", "advunlearn")  # the order the grid runs in
REFERENCE_LR = {"trust": 2e-3, "esd-x": 1e-5, "esd-u": 1e-5, "salun": 1e-5, "advunlearn": 1e-5}
LR_FACTORS = (1 / 3, 1.0, 3.0)
STEPS = (100, 200, 400)
LENGTH_SCHEDULED = ("advunlearn",)  # the warm-up is a fifth of --steps: a run per grid length
RESULTS = Path("results/tuning/tuning.json")


def reference_lr(label: str) -> float:
    name = label.partition(":")[0]
    if name not in REFERENCE_LR:
        raise UserError(f"no reference learning rate for {label!r}: tune one of {', '.join(TUNED_METHODS)}")
    return REFERENCE_LR[name]


def grid_label(label: str, lr: float) -> str:
    return f"{label}{',' if ':' in label else ':'}lr={lr:.3g}"


def grid_runs(label: str, lr: float) -> dict[int, str]:
    """Grid length -> the label of the run whose curve gives that point: the one long run, evaluated on the way,
    or for a LENGTH_SCHEDULED method a run of each length ('advunlearn:lr=1e-05,steps=100')."""
    full = grid_label(label, lr)
    if label.partition(":")[0] not in LENGTH_SCHEDULED:
        return {steps: full for steps in STEPS}
    return {steps: full if steps == STEPS[-1] else f"{full},steps={steps}" for steps in STEPS}


def tuning_config(methods: list[str], lrs: dict[str, list[float]], out: str, workers: int) -> BenchConfig:
    runs = [run for m in methods for lr in lrs[m] for run in grid_runs(m, lr).values()]
    return BenchConfig(methods=list(dict.fromkeys(runs)), tasks=list(DEV_TASKS), seeds=1,
                       attacks=[], checkpoints=list(STEPS[:-1]), eval=dict(CHECKPOINT_EVAL),
                       checkpoint_eval=dict(CHECKPOINT_EVAL), common={"steps": STEPS[-1], "stop": False, "probe_every": 0},
                       results=str(RESULTS), out=out, workers=workers)


def grid_jobs(cfg: BenchConfig) -> list[dict]:
    """The grid's jobs: a run of one grid length is evaluated at its end only."""
    jobs = plan(cfg)
    for job in jobs:
        if ",steps=" in job["label"]:
            job["checkpoints"] = []
    return jobs


def grid_points(cells: list[dict], label: str, lrs: list[float]) -> list[dict]:
    """Per (lr, steps): mean forget, mean unseen-retain drop and mean training seconds over the dev tasks."""
    points = []
    for lr in lrs:
        runs = grid_runs(label, lr)
        by_run = {run: [c for c in cells if c["method"] == run and "error" not in c] for run in set(runs.values())}
        if any(len({c["task"] for c in group}) < len(DEV_TASKS) for group in by_run.values()):
            continue
        for steps, run in runs.items():
            at = [next(p for p in c["curve"] if p["step"] == steps) for c in by_run[run]]
            points.append({"lr": lr, "steps": steps,
                           "forget": statistics.mean(p["forget"] for p in at),
                           "retain_drop": statistics.mean(p["retain_unseen_before"] - p["retain_unseen"] for p in at),
                           "train_seconds": statistics.mean(p["train_seconds"] for p in at)})
    return points


def select(points: list[dict]) -> dict | None:
    """The declared rule: lowest forget among retain drop <= 3 points (ties: shorter), else best forget + drop."""
    if not points:
        return None
    ok = [p for p in points if p["retain_drop"] <= RETAIN_SLACK + 1e-9]
    if ok:
        return min(ok, key=lambda p: (round(p["forget"], 6), p["train_seconds"]))
    return min(points, key=lambda p: (round(p["forget"] + p["retain_drop"], 6), p["train_seconds"]))


def run_tuning(methods: list[str] | None = None, out: str = "runs/tuning", workers: int = 2, log=print) -> dict:
    """Run the grid (resuming from results/tuning/tuning.json), extend it at an edge once, write the choice."""
    methods = list(methods or TUNED_METHODS)
    lrs = {m: [reference_lr(m) * f for f in LR_FACTORS] for m in methods}
    store = CellStore(RESULTS, {"rule": "docs/baselines.md#tuning", "tasks": list(DEV_TASKS)})
    for round_ in range(2):
        cfg = tuning_config(methods, lrs, out, workers)
        jobs = grid_jobs(cfg)
        done = store.done()
        todo = [j for j in jobs if (j["task"], j["label"], j["seed"]) not in done and j["label"] != "original"]
        # method by method, so each method's choice is complete as early as possible
        owner = {run: k for k, m in enumerate(methods) for lr in lrs[m] for run in grid_runs(m, lr).values()}
        todo.sort(key=lambda j: owner[j["label"]])
        log(f"[tune] round {round_ + 1}: {len(todo)} of {len(jobs)} grid runs to do")
        _run(todo, store, cfg, log)
        if round_:
            break
        extended = False
        for m in methods:
            best = select(grid_points(store.cells(), m, lrs[m]))
            if best and best["lr"] in (min(lrs[m]), max(lrs[m])):
                lrs[m].append(best["lr"] * (3.0 if best["lr"] == max(lrs[m]) else 1 / 3))
                log(f"[tune] {m}: the choice lr {best['lr']:.3g} is at the grid's edge: adding lr {lrs[m][-1]:.3g}")
                extended = True
        if not extended:
            break
    return write_choice(store.cells(), methods, lrs, log)


def _run(jobs: list[dict], store: CellStore, cfg: BenchConfig, log) -> None:
    def report(job, cell, seconds):
        log(f"[tune] {job['task']} / {job['label']}: " + (cell.get("error") or " ".join(
            f"@{p['step']} forget {p['forget']:.0%} drop {p['retain_unseen_before'] - p['retain_unseen']:+.1%}"
            for p in cell["curve"])))

    run_cells(jobs, store, cfg.workers, cfg.threads_per_cell, report)


def write_choice(cells: list[dict], methods: list[str], lrs: dict, log=print) -> dict:
    """Select per method and write tuned.yaml's testbed entries (status: tuned) and the grid to tuning.json."""
    tuned = yaml.safe_load(TUNED_PATH.read_text())
    choices = {}
    for m in methods:
        points = grid_points(cells, m, lrs[m])
        best = select(points)
        choices[m] = {"points": points, "choice": best}
        if best is None:
            log(f"[tune] {m}: grid incomplete, tuned.yaml unchanged")
            continue
        entry = tuned["testbed"].setdefault(m, {"common": {}})
        entry["common"] = {**entry.get("common", {}), "lr": float(f"{best['lr']:.3g}"), "steps": best["steps"]}
        entry["status"] = "tuned"
        entry["tuning"] = {"forget": round(best["forget"], 4), "retain_drop": round(best["retain_drop"], 4),
                           "qualifies": best["retain_drop"] <= RETAIN_SLACK + 1e-9, "file": str(RESULTS)}
        log(f"[tune] {m}: lr {best['lr']:.3g}, {best['steps']} steps (dev mean forget {best['forget']:.1%}, "
            f"retain drop {best['retain_drop']:+.1%})")
    _write_tuned(tuned)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    write_json(RESULTS, {**data, "choices": {**data.get("choices", {}), **choices}})  # other methods' choices stay
    write_grid_report(cells)
    return choices


def grid_report(cells: list[dict]) -> str:
    """Markdown: every tuned label's grid (mean forget, unseen-retain drop and training seconds over the dev
    tasks per learning rate and length) with the rule's choice marked; labels still missing tasks are listed."""
    by_label: dict[str, dict[float, set]] = {}  # label -> lr -> dev tasks with a run
    for c in cells:
        base, _, lr = re.sub(r",steps=\d+$", "", c["method"]).rpartition("lr=")
        by_label.setdefault(base.rstrip(",:"), {}).setdefault(float(lr), set()).add(c["task"])
    out = ["# Tuning grid (dev tasks: " + ", ".join(DEV_TASKS) + ")", "",
           "Generated by `trust bench --tune --report-only` from results/tuning/tuning.json. Mean over the dev "
           "tasks; drop = unseen-retain points lost; **bold**: the selection rule's choice (docs/baselines.md); "
           f"a setting qualifies if its drop is <= {RETAIN_SLACK:.0%}.", ""]
    for label, lrs in by_label.items():
        points = grid_points(cells, label, sorted(lrs))
        missing = [lr for lr in sorted(lrs) if lr not in {p["lr"] for p in points}]
        out += [f"## {label}", ""]
        if missing:
            tasks = set().union(*lrs.values())
            out += [f"incomplete: lr {', '.join(f'{lr:.3g}' for lr in missing)} lack runs "
                    f"({len(tasks)} of {len(DEV_TASKS)} dev tasks have some run)", ""]
        if not points:
            continue
        best = select(points)
        out += ["| lr | steps | forget | retain drop | train s | qualifies |", "|---|---|---|---|---|---|"]
        for p in points:
            row = [f"{p['lr']:.3g}", str(p["steps"]), f"{p['forget']:.1%}", f"{p['retain_drop'] * 100:+.1f}",
                   f"{p['train_seconds']:.0f}", "yes" if p["retain_drop"] <= RETAIN_SLACK + 1e-9 else "no"]
            out.append("| " + " | ".join(f"**{x}**" if p is best else x for x in row) + " |")
        out.append("")
    return "\n".join(out)


def write_grid_report(cells: list[dict], path: Path = RESULTS) -> Path:
    report = path.with_name("results.md")
    report.write_text(grid_report(cells))
    return report


def _write_tuned(tuned: dict) -> None:
    header = "".join(line for line in TUNED_PATH.read_text().splitlines(keepends=True) if line.startswith("#"))
    body = yaml.safe_dump(tuned, sort_keys=False, default_flow_style=None, width=140)
    tmp = TUNED_PATH.with_name(".tuned.yaml.tmp")
    tmp.write_text(header + body)
    tmp.replace(TUNED_PATH)

