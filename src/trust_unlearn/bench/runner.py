"""The side-by-side benchmark: methods x tasks x training seeds on the testbed, under the protocol.

Every trained method runs with its tuned settings (methods/tuned.yaml, chosen on the dev tasks by
`trust bench --tune`), through the same engine, with the same seeds and the same evaluation; the first
training seed's final model (by default) is attacked by every attack, and so is the original model
of each task, so an ASR is always shown next to the same attack on the original. Each cell (task,
method, seed) runs in its own process (cells.py), `workers` at a time with the cores split between
them, and is merged into the results file as soon as it finishes: the bench resumes cell by cell.

Folder layout: the results file (default results/bench/bench.json) with results.md, results.csv and
report.html beside it; run folders under `out` (default runs/bench/TASK/METHOD/seedK/run, whose
config.yaml re-runs that run alone).
"""
from __future__ import annotations

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from trust_unlearn.bench.cells import ORIGINAL, CellStore, cell_key, check_job, run_isolated
from trust_unlearn.errors import UserError
from trust_unlearn.evaluation.protocol import DEV_TASKS, TEST_TASKS

# SalUn on the testbed with TRUST's retain weight: at the reference's alpha = 0.1 (and 0.5) its forget term turns
# every colour into the anchor's (docs/baselines.md, "SalUn's retain weight")
SALUN = "salun:alpha=2"
# trust-robust: issue 15's robust mode; trust-static: the same TRUST with its mask frozen, for the cost of
# re-locating the neurons (not attacked: it answers a cost question)
DEFAULT_METHODS = ("trust", "trust:reg=csr", "trust-robust", "esd-x", "esd-u", SALUN, "conceptprune", "uce", "advunlearn",
                   "trust-static")
ABLATION_METHODS = ("trust-static", "trust-noise-saliency", "trust-zero", "trust-noreg")
DEFAULT_ATTACKS = ("unlearndiffatk", "p4d", "ringabell", "mma", "paraphrase")
TRAINING_FREE = ("conceptprune", "uce")
BASELINES = ("esd-x", "esd-u", SALUN, "conceptprune", "uce", "advunlearn")
METHOD_GROUPS = {"default": DEFAULT_METHODS, "baselines": BASELINES, "ablations": ABLATION_METHODS,
                 "all": tuple(dict.fromkeys(DEFAULT_METHODS + ABLATION_METHODS))}
# evaluations during training, for forget / retain over wall-clock and the time-to-target: the protocol's
# target captions at 4 seeds each and its unseen retain scenes at 8 (the final evaluation is the full one)
CHECKPOINT_EVAL = {"target_seeds": 4, "retain_seeds": 8, "seen": False}
QUICK = {"tasks": ["circle"], "seeds": 1, "checkpoints": [6], "attack_prompts": 2,
         "common": {"steps": 12, "cache_images": 16, "cache_steps": 10, "probe_every": 0},
         "eval": {"target_prompts": 4, "target_seeds": 2, "retain_seeds": 1},
         "checkpoint_eval": {"target_prompts": 4, "target_seeds": 2, "retain_seeds": 1, "seen": False}}


@dataclass
class BenchConfig:
    model: str = "testbed"
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    tasks: list = field(default_factory=lambda: list(TEST_TASKS))
    seeds: int = 3  # training seeds 0..seeds-1 of every trained method
    attacks: list = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    attack_seeds: list = field(default_factory=lambda: [0])  # training seeds whose final model is attacked
    attack_prompts: int = 16
    attack_budget: int | dict | None = None  # None: each attack's default budget
    confine_attacks: bool = False  # white-box prefixes without the concept's attribute words (docs/attacks.md)
    sweep: dict = field(default_factory=dict)  # {"xi": [1.5, 2.0]} -> trust variants
    quick: bool = False
    results: str | None = None  # the cells file (default results/bench/bench.json; quick: OUT/bench.json)
    out: str = "runs/bench"
    workers: int = 2  # cells side by side, each in its own process
    threads: int | None = None  # CPU threads per cell (default: this process's threads / workers)
    checkpoints: list = field(default_factory=lambda: [25, 50, 100, 200])
    eval: dict = field(default_factory=dict)  # EvalConfig options of the final evaluation (the protocol's)
    checkpoint_eval: dict = field(default_factory=lambda: dict(CHECKPOINT_EVAL))
    common: dict = field(default_factory=dict)  # CommonConfig options for every method
    overrides: dict = field(default_factory=dict)  # label -> {"common": {...}, "method_args": {...}}
    rerun_stale: bool = False  # re-run cells whose code or settings differ from the current ones

    @classmethod
    def from_yaml(cls, path) -> "BenchConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "bench.yaml"
        if not path.exists():
            raise UserError(f"bench config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"bench config {path} has unknown keys {sorted(unknown)}")
        return cls(**data)

    def apply_quick(self) -> "BenchConfig":
        """The small profile: one task, one seed, 12 steps, a small evaluation, the attacks' quick mode."""
        self.quick = True
        for key in ("tasks", "seeds", "checkpoints", "attack_prompts"):
            setattr(self, key, list(QUICK[key]) if isinstance(QUICK[key], list) else QUICK[key])
        self.common = {**QUICK["common"], **self.common}
        self.eval = {**QUICK["eval"], **self.eval}
        self.checkpoint_eval = dict(QUICK["checkpoint_eval"])
        return self

    @property
    def results_path(self) -> Path:
        if self.results:
            return Path(self.results)
        return Path(self.out) / "bench.json" if self.quick else Path("results/bench/bench.json")

    @property
    def threads_per_cell(self) -> int:
        """The CPU threads this process may use (`trust --threads`, OMP_NUM_THREADS, else its cores), split
        between the workers."""
        import torch

        return self.threads or max(1, torch.get_num_threads() // max(1, self.workers))


# ------------------------------------------------------------------ labels
def parse_method_label(label: str) -> tuple[str, dict]:
    """'trust' -> ('trust', {}); 'trust:xi=1.5,beta=0.1' -> ('trust', {'xi': 1.5, 'beta': 0.1})."""
    name, _, rest = label.partition(":")
    args = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"method {label!r}: write NAME:KEY=VALUE,KEY=VALUE (e.g. trust:xi=1.5,beta=0.1)")
        args[key.strip().replace("-", "_")] = _value(value)
    return name.strip(), args


def _value(text: str):
    """A label value as YAML reads it, and 1e-5 as a number (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_sweep(items: list[str]) -> dict:
    """['xi=1.5,2,2.5', 'beta=0.1,1'] -> {'xi': [1.5, 2, 2.5], 'beta': [0.1, 1]}."""
    out = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        vals = [_value(v) for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise UserError(f"--sweep {item!r}: write KEY=V1,V2,... (e.g. --sweep xi=1.5,2,2.5 beta=0.1,1)")
        out[key.strip().replace("-", "_")] = vals
    return out


def expand_methods(methods: list[str], sweep: dict) -> list[str]:
    labels = []
    for m in methods:
        labels += list(METHOD_GROUPS[m]) if m in METHOD_GROUPS else [m]
    if sweep:
        keys = sorted(sweep)
        for combo in itertools.product(*(sweep[k] for k in keys)):
            labels.append("trust:" + ",".join(f"{k}={v}" for k, v in zip(keys, combo)))
    return list(dict.fromkeys(labels))


def _split_common(args: dict) -> tuple[dict, dict]:
    """Label options that are common training options (steps, lr, batch, ...) vs method options."""
    from trust_unlearn.methods.base import CommonConfig

    names = {f.name for f in fields(CommonConfig)}
    return {k: v for k, v in args.items() if k in names}, {k: v for k, v in args.items() if k not in names}


def resolve_settings(label: str, testbed: bool, common: dict | None = None, overrides: dict | None = None) -> tuple[str, dict]:
    """(method name, {"common", "method_args"}) of a label: its tuned settings, then the bench's common options,
    then the label's own options, then per-label overrides."""
    from trust_unlearn.methods import get_method, tuned_settings

    name, args = parse_method_label(label)
    label_common, method_args = _split_common(args)
    extra = (overrides or {}).get(label, {})
    method_args = {**method_args, **extra.get("method_args", {})}
    cls = get_method(name)
    resolved_args = asdict(cls.config_cls(**method_args)) if _accepts(cls.config_cls, method_args) else method_args
    tuned = tuned_settings(name, resolved_args, testbed)
    method_args = {**tuned["method_args"], **method_args}
    merged = {**tuned["common"], **(common or {}), **label_common, **extra.get("common", {})}
    if name in TRAINING_FREE:
        merged["steps"] = 1  # the edit happens in step 0
    return name, {"common": merged, "method_args": method_args}


def _accepts(config_cls, values: dict) -> bool:
    return set(values) <= {f.name for f in fields(config_cls)}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.=_-]+", "-", text.lower()).strip("-")


# ------------------------------------------------------------------ the plan: every cell as a job
def plan(cfg: BenchConfig) -> list[dict]:
    """Every cell of the bench as a job, validated before anything runs (originals first, then seed by seed)."""
    from trust_unlearn.pipeline import load_model
    from trust_unlearn.world.concepts import parse_concept

    if not cfg.methods and not cfg.sweep:
        raise UserError("no method to run: pass --methods NAME ... (e.g. trust esd-x uce)")
    if not cfg.tasks:
        raise UserError("no task: pass --tasks CONCEPT ... (e.g. circle 'red circle')")
    if cfg.seeds < 1 or cfg.workers < 1 or cfg.attack_prompts < 1:
        raise UserError("--seeds, --workers and --attack-prompts must be at least 1")
    tasks = [parse_concept(t).text for t in cfg.tasks]
    mixed = set(tasks) & set(DEV_TASKS), set(tasks) & set(TEST_TASKS)
    if all(mixed):
        raise UserError("dev and test tasks in one bench: tune on dev tasks (--tune), report test tasks, apart")
    attacks = []
    names = [a for a in cfg.attacks or [] if str(a).lower() != "none"]
    if names:
        from trust_unlearn.attacks import resolve_attacks

        attacks = resolve_attacks(names)
    testbed = load_model(cfg.model).is_testbed
    if not testbed:
        raise UserError("trust bench judges results with the shapes-world judge: it runs on the testbed "
                        "(--model testbed or an exported testbed pipeline)")
    from trust_unlearn.evaluation.evaluate import EvalConfig
    from trust_unlearn.unlearn import _typed

    _typed(EvalConfig, cfg.eval, "eval")
    _typed(EvalConfig, cfg.checkpoint_eval, "checkpoint_eval")
    base = {"model": cfg.model, "eval": cfg.eval, "checkpoint_eval": cfg.checkpoint_eval, "attack_prompts": cfg.attack_prompts,
            "attack_budget": cfg.attack_budget, "confine_attacks": cfg.confine_attacks, "quick": cfg.quick}
    jobs = [{**base, "task": t, "label": ORIGINAL, "method": ORIGINAL, "seed": 0, "settings": None, "checkpoints": [],
             "attacks": attacks, "out": str(Path(cfg.out) / slug(t) / ORIGINAL)} for t in tasks]
    labels = expand_methods(cfg.methods, cfg.sweep)
    for seed in range(cfg.seeds):
        for t in tasks:
            for label in labels:
                name, settings = resolve_settings(label, testbed, cfg.common, cfg.overrides)
                steps = int(settings["common"].get("steps", 1))
                job = {**base, "task": t, "label": label, "method": name, "seed": seed, "settings": settings,
                       "checkpoints": [] if name in TRAINING_FREE else [c for c in cfg.checkpoints if c < steps],
                       "attacks": attacks if seed in cfg.attack_seeds and name not in ABLATION_METHODS else [],
                       "out": str(Path(cfg.out) / slug(t) / slug(label) / f"seed{seed}")}
                check_job(job)
                jobs.append(job)
    return jobs


def is_stale(cell: dict, job: dict) -> bool:
    """The cell ran other code or other settings than the job would now."""
    from trust_unlearn.bench.cells import source_hash

    return (cell.get("source_hash") != source_hash(job["method"])
            or _deciding_settings(cell.get("settings")) != _deciding_settings(job["settings"]))


def attacks_to_run(cell: dict, job: dict, rerun_stale: bool) -> list[str]:
    """The job's attacks the cell lacks; with `rerun_stale`, every one of them when the cell's attacks ran other
    attack code (another ASR protocol: its figures are not comparable with today's)."""
    from trust_unlearn.bench.cells import attack_hash

    if rerun_stale and job["attacks"] and cell.get("asr") and cell.get("attack_hash") != attack_hash():
        return list(job["attacks"])
    return [a for a in job["attacks"] if a not in cell.get("asr", {})]


def _deciding_settings(settings: dict | None) -> dict | None:
    """Settings as far as they decide a cell's model: a run that never stops only logs its probes (the same
    weights with or without them, tests/test_stopping.py), so their interval is left out; such a cell's train
    seconds include probes the current settings may skip (docs/baselines.md)."""
    if not settings or settings["common"].get("stop", True):
        return settings
    return {**settings, "common": {k: v for k, v in settings["common"].items() if k != "probe_every"}}


# ------------------------------------------------------------------ running
def run_cells(jobs: list[dict], store: CellStore, workers: int, threads: int, report) -> None:
    """Each job in its own process (`workers` side by side, `threads` each), merged into `store` as it
    finishes; `report(job, cell, seconds)` after each."""
    def one(job):
        t0 = time.perf_counter()
        cell = run_isolated(job, threads)
        store.put(cell)
        report(job, cell, time.perf_counter() - t0)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, jobs))


def run_bench(cfg: BenchConfig, log=print) -> dict:
    """Run every missing cell (workers at a time), merging each into the results file; then the outputs."""
    jobs = plan(cfg)
    store = CellStore(cfg.results_path, {"protocol": "docs/protocol.md", "bench": "docs/baselines.md"})
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "bench.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    todo = []
    for job in jobs:
        cell = store.get((job["task"], job["label"], job["seed"]))
        if cell is None or (cfg.rerun_stale and is_stale(cell, job)):
            todo.append(job)
        elif missing := attacks_to_run(cell, job, cfg.rerun_stale):
            # the cell run again for these attacks alone, without its checkpoint evaluations (they draw from their
            # own seeded generators, not the training's random state, so the training is the same)
            todo.append({**job, "attacks": missing, "topup": cell, "checkpoints": []})
    threads = cfg.threads_per_cell
    topups = sum(bool(j.get("topup")) for j in todo)
    log(f"[bench] {len(todo)} of {len(jobs)} cells to run" + (f" ({topups} run again only for the attacks they lack)"
                                                               if topups else "")
        + f", {cfg.workers} at a time with {threads} thread(s) each; results in {store.path}")
    started = time.time()

    def report(job, cell, seconds):
        what = cell.get("error") or (f"forget {cell['forget']:.1%}, unseen retain {cell['retain_unseen']:.1%}"
                                     if cell.get("forget") is not None else "done")
        log(f"[bench] {job['task']} / {job['label']} / seed {job['seed']}: {what} ({seconds:.0f} s)")

    # every attack figure needs its original's: the originals first
    run_cells([j for j in todo if j["label"] == ORIGINAL], store, cfg.workers, threads, report)
    run_cells([j for j in todo if j["label"] != ORIGINAL], store, cfg.workers, threads, report)
    from trust_unlearn.bench.report import write_outputs

    by_key = {(j["task"], j["label"], j["seed"]): j for j in jobs}
    cells = [c for c in store.cells() if cell_key(c) in by_key]
    stale = {cell_key(c) for c in cells if "error" not in c and is_stale(c, by_key[cell_key(c)])}
    summary = write_outputs(cells, store.path.parent, stale=stale, seconds=time.time() - started)
    failed = [c for c in cells if "error" in c]
    if failed:
        log(f"[bench] {len(failed)} cell(s) failed: " + "; ".join(f"{c['task']}/{c['method']}/{c['seed']}: {c['error']}"
                                                                 for c in failed))
    return summary
