"""One cell of a benchmark: one method on one task with one training seed, measured under the protocol.

A cell is one `trust unlearn` run (evaluated before and after with the protocol's evaluation), with
cheaper evaluations at checkpoint steps (forget and unseen retain over training wall-clock, hence the
time-to-target), optionally attacked, and returned as one flat JSON record. The original model of a
task is a cell too (method "original": its evaluation and the attacks' ASR on it), so every attack
figure of a method can be shown next to the same attack on the original.

Cells are stored in a results file (`{"cells": [...]}`) and keyed by (task, method, seed): a run of the
bench skips the cells already there, so it resumes cell by cell across sittings. Every cell records the
commit and digests of the code it ran (method, engine, attacks); the report flags cells whose code has
changed since.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from trust_unlearn.errors import UserError
from trust_unlearn.methods import get_method
from trust_unlearn.utils import write_json

PACKAGE = Path(__file__).resolve().parent.parent
ROOT = PACKAGE.parent.parent
FORGET_TARGET, RETAIN_SLACK = 0.05, 0.03
ORIGINAL = "original"
# the code every cell's figures depend on (an original cell runs only the evaluation), and the training
# engine every trained cell also runs, whatever its method (not the registry, nor tuned.yaml: a cell's
# settings are recorded and compared on their own)
EVALUATION_FILES = ("concept_spec.py", "evaluation/evaluate.py", "evaluation/protocol.py", "evaluation/judges.py",
                    "evaluation/geometric.py")
ENGINE_FILES = ("unlearn.py", "stopping.py", "neurons.py", "methods/base.py")
SCORER_WEIGHTS = "testbed/weights/scorer.safetensors"  # the shipped scorer; the judges' weights are not digested
# The stopping rule runs only beside an alignment scorer (unlearn.py builds a StoppingRule only then): a method
# without one digests stopping.py as it was at this commit, the version its cells' digests read, so that the rule's
# edits leave those cells current (tests/test_bench.py)
UNSTEERED_PINS = {"stopping.py": "5bc5ef9546094b20e90ad315018bcba3dc2176a2"}


# ------------------------------------------------------------------ identity of a cell
def cell_key(cell: dict) -> tuple:
    return cell["task"], cell["method"], int(cell["seed"])


def git_commit() -> str:
    """HEAD, with "-dirty" when the package source differs from it."""
    run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    head = run("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if run("status", "--porcelain", "--untracked-files=no", "src") else "")


# Edits of a hashed file that change no figure of the cells they would mark stale, each declared with the check
# that shows it. (file, sha256[:12] of its content after the edit) -> the commit whose version the digest reads
# instead (git show); without git the edit counts, and the cells read stale. docs/baselines.md lists them.
FIGURE_NEUTRAL_EDITS = {
    # the evaluation's image-cache key also digests the text encoders (AdvUnlearn's images were the original's):
    # a model with the original text encoder draws the same images under either key; re-evaluating red / trust
    # seed 0 and the red original under the new key gave the cells' figures (docs/baselines.md)
    ("evaluation/evaluate.py", "052f7dc18a17"): "55a75a12c7ff1f47c6b66371cf45b087ae963698",
    # TRUST's `contrast` option (off by default): with contrast 0 the runs are the same tensors, bit for bit
    # (scripts/figure_neutral_check.py before / after: results/diagnostics/contrast/neutral_check.json)
    ("methods/trust.py", "1a19124dc7c5"): "512e4ef96171765f87bd4bac6d4c8037a4b08cc5",
    ("neurons.py", "d8226f55ed61"): "512e4ef96171765f87bd4bac6d4c8037a4b08cc5",
    # the attacks' `confine` option (off by default): the same prompts and shares, bit for bit, off
    # (`trust attack --quick` before / after: results/diagnostics/attack_floor/confine_neutral_check.json)
    ("attacks/base.py", "8adac3fe3b72"): "f399d329e76ce26ed2fe09b16780131ccd80a0c4",
    ("attacks/__init__.py", "e6bbf56a8c3b"): "f399d329e76ce26ed2fe09b16780131ccd80a0c4",
    ("attacks/cli.py", "05afdbcba3b4"): "f399d329e76ce26ed2fe09b16780131ccd80a0c4",
    # the probes' texts are embedded first, in their batches, whether or not a run probes: a run that probes (every
    # TRUST cell) reads the same text features as before, bit for bit (scripts/figure_neutral_check.py with its
    # testbed runs, before / after: results/diagnostics/probe_texts/neutral_check.json)
    ("unlearn.py", "4d322c776b3a"): "5bc5ef9546094b20e90ad315018bcba3dc2176a2",
    ("stopping.py", "49e6ba508980"): "5bc5ef9546094b20e90ad315018bcba3dc2176a2",
    # per-prompt attack seeds: the edit touches only `attack_seeds` (an optional offset; no evaluation calls it) and
    # the module docstring (`git diff ebf2c0c -- src/trust_unlearn/evaluation/protocol.py`); the attacks' own
    # digest (attack_hash) changes, and with it every ASR is measured again
    ("evaluation/protocol.py", "21daf8e69f58"): "ebf2c0c5e445147af1eca626ae49dcc07bfc9945",
    # `trust where` counts attack-only neurons against the rows a run trained (and in what share of its steps): an
    # analysis of attack results, which no attack imports (`git diff 3d84e33 -- src/trust_unlearn/attacks/where.py`)
    ("attacks/where.py", "9b59ded51677"): "3d84e33cc6263eae6746f1e6a6f2404ea20d2821",
    # `stop_retain_drop`, a stopping-rule setting: only stopping.py reads it, and no method without a scorer runs the
    # rule (`git diff e2b23ec -- src/trust_unlearn/methods/base.py`: the field, its check, two comments); the
    # scorer-steered methods' cells go stale with stopping.py itself
    ("methods/base.py", "99d2d981a484"): "e2b23ecbb2b3d07372b7ef5c4a813e23a56f32a5",
}


@functools.lru_cache(maxsize=None)
def _version_at(commit: str, path: str) -> bytes | None:
    """A file as it was at a commit (None without git or that commit); asked once per process, not per cell."""
    old = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True)
    return old.stdout if old.returncode == 0 else None


def _read_as_declared(path: Path, pins: dict) -> bytes:
    pinned = pins.get(path.relative_to(PACKAGE).as_posix())
    old = _version_at(pinned, path.relative_to(ROOT).as_posix()) if pinned else None
    if old is not None:
        return old
    data = path.read_bytes()
    commit = FIGURE_NEUTRAL_EDITS.get((path.relative_to(PACKAGE).as_posix(), hashlib.sha256(data).hexdigest()[:12]))
    old = _version_at(commit, path.relative_to(ROOT).as_posix()) if commit else None
    return data if old is None else old


def _digest(paths, pins: dict | None = None) -> str:
    """sha256[:12] over the files' names and contents; `pins` (file -> commit) reads a file as it was at a commit."""
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(Path(path).relative_to(PACKAGE).as_posix().encode())
        h.update(_read_as_declared(Path(path), pins or {}))
    return h.hexdigest()[:12]


def method_files(name: str) -> list[Path]:
    """The source files of a method: its class and every base class defined in this package."""
    files = []
    for cls in inspect.getmro(get_method(name)):
        try:
            path = Path(inspect.getsourcefile(cls)).resolve()
        except TypeError:
            continue
        if PACKAGE in path.parents:
            files.append(path)
    return files


def source_hash(name: str) -> str:
    """Digest of the code a cell of method `name` ran: the evaluation, plus for a trained method the engine
    and the method's files, and for a method steered by the alignment scorer (TRUST) the scorer's weights."""
    files, pins = [PACKAGE / f for f in EVALUATION_FILES], {}
    if name != ORIGINAL:
        files += [PACKAGE / f for f in ENGINE_FILES] + method_files(name)
        if getattr(get_method(name), "needs_scorer", False):
            files.append(PACKAGE / SCORER_WEIGHTS)
        else:
            pins = UNSTEERED_PINS
    return _digest(files, pins)


def attack_hash() -> str:
    return _digest((PACKAGE / "attacks").glob("*.py"))


# ------------------------------------------------------------------ the results file
class CellStore:
    """The cells of one results file; each finished cell is merged in and the file rewritten atomically."""

    def __init__(self, path: str | Path, header: dict | None = None):
        self.path = Path(path)
        self.header = header or {}
        self.lock = threading.Lock()

    def cells(self) -> list[dict]:
        return json.loads(self.path.read_text()).get("cells", []) if self.path.exists() else []

    def done(self) -> set[tuple]:
        return {cell_key(c) for c in self.cells() if "error" not in c}

    def get(self, key: tuple) -> dict | None:
        return next((c for c in self.cells() if cell_key(c) == key and "error" not in c), None)

    def put(self, cell: dict) -> None:
        with self.lock:
            data = json.loads(self.path.read_text()) if self.path.exists() else {}
            kept = [c for c in data.get("cells", []) if cell_key(c) != cell_key(cell)]
            data.update(self.header)
            data["cells"] = kept + [cell]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, data)


# ------------------------------------------------------------------ one cell, in this process
def meets_target(point: dict) -> bool:
    """Forget <= 5 % with unseen retain at most 3 points below the original's (the time-to-target bar)."""
    return point["forget"] <= FORGET_TARGET and point["retain_unseen"] >= point["retain_unseen_before"] - RETAIN_SLACK


def time_to_target(curve: list[dict]) -> float | None:
    return next((p["train_seconds"] for p in curve if meets_target(p)), None)


def _protocol_figures(before: dict, after: dict) -> dict:
    """The protocol's fields of a cell (rates as fractions), from two `evaluate` results."""
    out = {}
    for key, src in (("forget", "forget_rate"), ("forget_geometric", "forget_rate_geometric"),
                     ("unrecognised", "unrecognised"), ("unrecognised_geometric", "unrecognised_geometric"),
                     ("anchor_rate", "anchor_rate"), ("retain_seen", "retain_seen"), ("retain_unseen", "retain_unseen"),
                     ("lookalike_seen", "lookalike_seen"), ("lookalike_unseen", "lookalike_unseen"),
                     ("fd_judge", "fd_judge")):
        out[key] = after.get(src)
        out[f"{key}_before"] = before.get(src)
    out["judge_disagreements"] = after.get("judge_disagreements", {}).get("count")
    return out


def _curve_point(step: int, train_seconds: float, res: dict, before: dict) -> dict:
    return {"step": step, "train_seconds": train_seconds, "forget": res["forget_rate"],
            "forget_geometric": res.get("forget_rate_geometric"), "unrecognised": res["unrecognised"],
            "retain_unseen": res["retain_unseen"], "retain_unseen_before": before["retain_unseen"]}


def _attack(model, original, task: str, job: dict, out: Path) -> dict:
    from trust_unlearn.attacks import run_attack_suite

    found = run_attack_suite(model, original, task, job["attacks"], seed=job.get("attack_seed", 0),
                             budget=job.get("attack_budget"), out=out, quick=job.get("quick", False),
                             n_prompts=job["attack_prompts"], show_progress=False,
                             confine=job.get("confine_attacks", False))
    return {"asr": {a: r["asr"] for a, r in found.items()}, "asr_ci": {a: r["asr_ci"] for a, r in found.items()},
            "attack_prompts": {a: r["n_prompts"] for a, r in found.items()},
            "attack_seconds": {a: r["seconds"] for a, r in found.items()},
            "pre_attack_asr": next(iter(found.values()))["pre_attack_asr"], "attack_hash": attack_hash(),
            **({"attacks_confined": True} if job.get("confine_attacks") else {})}


def _header(job: dict) -> dict:
    """A cell's identity, taken when it starts: the commit and code it runs (a commit made while it runs is not
    its code); `finished` is stamped at the end."""
    return {"task": job["task"], "method": job["label"], "seed": int(job["seed"]), "commit": git_commit(),
            "source_hash": source_hash(job["method"]), "settings": job.get("settings"), "threads": _threads(),
            "machine": machine()}


@functools.lru_cache(maxsize=None)
def machine() -> dict:
    """The CPU and torch a cell ran on: training on another CPU (other vector kernels) can take another path
    from the first float differences on, so a re-run elsewhere need not reproduce a cell bit for bit."""
    import platform

    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def _finished() -> dict:
    return {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_original_cell(job: dict) -> dict:
    """The original model of a task: its evaluation, and (when asked) every attack on it."""
    from trust_unlearn.evaluation.evaluate import EvalConfig
    from trust_unlearn.pipeline import load_model

    started, header = time.perf_counter(), _header(job)
    original = load_model(job["model"])
    res = original_evaluation(original, job, EvalConfig(**job["eval"]), Path(job["out"]).parent)
    cell = {**header, **{k: v for k, v in _protocol_figures(res, res).items() if not k.endswith("_before")}}
    if job["attacks"]:
        cell.update(_attack(original, original, job["task"], job, Path(job["out"]) / "attacks"))
    cell.update(total_seconds=time.perf_counter() - started, **_finished())
    return cell


def run_method_cell(job: dict) -> dict:
    """One method on one task and seed: train (evaluating at the checkpoints), evaluate, attack."""
    from trust_unlearn.evaluation.evaluate import EvalConfig, evaluate
    from trust_unlearn.pipeline import load_model
    from trust_unlearn.unlearn import UnlearnConfig, run_unlearn
    from trust_unlearn.world.concepts import parse_concept

    started, header = time.perf_counter(), _header(job)
    out = Path(job["out"])
    concept = parse_concept(job["task"])
    settings = job["settings"]
    ucfg = UnlearnConfig(model=job["model"], method=job["method"], concept=job["task"], out=str(out / "run"),
                         checkpoint_every=10**9, eval=job["eval"], common={**settings["common"], "seed": job["seed"]},
                         method_args=settings["method_args"])
    state: dict = {"curve": []}
    partial_log = out / ".run.partial" / "log.jsonl"
    check_cfg = EvalConfig(**job["checkpoint_eval"])
    original = load_model(job["model"])
    cache_dir = out.parent.parent
    check_before = original_evaluation(original, job, check_cfg, cache_dir) if job["checkpoints"] else None

    def on_start(ctx, method):
        state["ctx"] = ctx
        _share_original_images(ctx, job, cache_dir)

    def on_step(k):
        if k + 1 in job["checkpoints"]:
            rows = [json.loads(x) for x in partial_log.read_text().splitlines()]
            res = evaluate(state["ctx"].model, concept, check_cfg, reference=original)
            state["curve"].append(_curve_point(k + 1, sum(r["seconds"] for r in rows), res, check_before))

    before = original_evaluation(original, job, EvalConfig(**job["eval"]), cache_dir)
    summary = run_unlearn(ucfg, overwrite=True, on_step=on_step, on_start=on_start, before=before)
    before, after = summary["before"], summary["after"]
    final = _curve_point(summary["steps"], summary["wall_clock_s"], after, before)
    curve = [p for p in state["curve"] if p["step"] < summary["steps"]] + [final]
    cell = {
        **header, **_protocol_figures(before, after),
        "train_seconds": summary["wall_clock_s"], "seconds_per_step": summary["seconds_per_step"],
        "steps": summary["steps"], "max_steps": summary["max_steps"], "stopped_at": summary.get("stopped_at"),
        "probe_before": summary.get("probe_before"), "probes": summary.get("probes"),
        "peak_rss_mb": summary["peak_rss_mb"], "mean_mask": summary["mean_mask_size"],
        "rows": summary["n_trainable_rows"], "phase_seconds": summary.get("phase_seconds"),
        "mask_jaccard_step": summary.get("mask_jaccard_step"), "mask_jaccard_floor": summary.get("mask_jaccard_floor"),
        "curve": curve, "time_to_target_seconds": time_to_target(curve),
        "run_dir": str((out / "run").resolve()),
    }
    if job["attacks"]:
        cell.update(_attack(state["ctx"].model, original, job["task"], job, out / "attacks"))
    cell.update(total_seconds=time.perf_counter() - started, **_finished())
    return cell


def original_evaluation(original, job: dict, cfg, cache_dir: Path) -> dict:
    """The original model's evaluation of a task, computed once and shared by every cell that needs it
    (keyed on the model, the task, the evaluation options and the evaluation code)."""
    from dataclasses import asdict

    from trust_unlearn.evaluation.evaluate import evaluate
    from trust_unlearn.world.concepts import parse_concept

    key = json.dumps([job["model"], job["task"], asdict(cfg), source_hash(ORIGINAL)], sort_keys=True)
    path = cache_dir / f"original-eval-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    if path.exists():
        return json.loads(path.read_text())
    res = evaluate(original, parse_concept(job["task"]), cfg, reference=original)
    res = {k: v for k, v in res.items() if not k.startswith("_")}
    write_json(path, res)
    return res


def _share_original_images(ctx, job: dict, cache_dir: Path) -> None:
    """Cells of one task and seed share the original model's cached training images: the first computes them."""
    from safetensors.torch import load_file, save_file

    key = json.dumps([job["model"], ctx.common.seed, ctx.common.cache_images, ctx.common.cache_steps, ctx.guidance,
                      ctx.spec.to_dict()])
    path = cache_dir / f"original-images-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    if path.exists():
        ctx.cache_original_images = lambda: ctx.load_cache_tensors(load_file(path))
        return
    compute = ctx.cache_original_images

    def compute_and_share():
        compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in ctx.cache_tensors().items()}, tmp)
        os.replace(tmp, path)

    ctx.cache_original_images = compute_and_share


def run_cell(job: dict) -> dict:
    if job.get("topup"):
        return run_topup_cell(job)
    return run_original_cell(job) if job["label"] == ORIGINAL else run_method_cell(job)


# the figures a model trained again must give for an attack added later to be the attack of the cell's own model
REPRODUCED_FIGURES = ("forget", "forget_geometric", "unrecognised", "anchor_rate", "retain_seen", "retain_unseen",
                      "lookalike_seen", "lookalike_unseen", "fd_judge", "pre_attack_asr")


def run_topup_cell(job: dict) -> dict:
    """Attacks added to a finished cell (`job["topup"]`), which kept no model: the cell is run again (the
    original loaded; a method trained again with the cell's seed and settings, through the same path) with only
    the missing attacks, and they are merged into the cell with their own commit (merge_topup)."""
    return merge_topup(job["topup"], run_cell({**job, "topup": None}))


def reproduced(differences: dict) -> bool:
    """Every figure the same up to float noise. The rates are counts over fixed images: one image judged otherwise
    moves them by 1 % or more. The judge-feature Fréchet distance is continuous: of identical image sets it is
    ~1e-8, not 0, and the same model run on other CPU kernels moves it by 4e-6 to 4e-4 of itself (ESD-x, SalUn,
    UCE and ConceptPrune on `circle`, every rate identical), while a model that took another path moves it by
    tens of percent."""
    import math

    return all(isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)
               for a, b in differences.values())


def merge_topup(old: dict, fresh: dict) -> dict:
    """`old` with `fresh`'s attacks added; the cell's own figures, commit and code digests stay. Attacks that ran
    other attack code (`attack_hash`) are replaced, not added to: the old figures move into the top-up's record
    (`replaced`). Whether the re-run reproduced the cell's figures (the same model, bit for bit, gives the same
    ones) is recorded beside the attacks, with any difference: an attack on a model that differs from the cell's
    is marked as such."""
    replaced = old.get("attack_hash") not in (None, fresh["attack_hash"])
    # under other attack code the pre-attack ASR is another measurement (other image seeds), not a reproduction check
    figures = [k for k in REPRODUCED_FIGURES if not (replaced and k == "pre_attack_asr")]
    differences = {k: [old.get(k), fresh.get(k)] for k in figures if k in old and old.get(k) != fresh.get(k)}
    cell = dict(old)
    for key in ("asr", "asr_ci", "attack_prompts", "attack_seconds"):
        cell[key] = {**({} if replaced else old.get(key, {})), **fresh[key]}
    for key in ("pre_attack_asr", "attack_hash"):
        cell[key] = fresh[key] if replaced else old.get(key, fresh[key])
    cell["attack_topups"] = old.get("attack_topups", []) + [{
        "attacks": list(fresh["asr"]), "commit": fresh["commit"], "attack_hash": fresh["attack_hash"],
        "finished": fresh["finished"], "reproduced": reproduced(differences), "differences": differences,
        "seconds": fresh["total_seconds"], "machine": fresh.get("machine"),
        **({"replaced": {k: old.get(k) for k in ("asr", "pre_attack_asr", "attack_hash")}} if replaced else {})}]
    return cell


# ------------------------------------------------------------------ one cell, in its own process
def run_isolated(job: dict, threads: int) -> dict:
    """run_cell in a fresh Python process with `threads` CPU threads (honest RSS and wall-clock, no state
    carried between cells); a failure comes back as a cell with an "error" field."""
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    job_path, cell_path, log_path = out / "job.json", out / "cell.json", out / "cell.log"
    cell_path.unlink(missing_ok=True)
    write_json(job_path, job)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, "-m", "trust_unlearn.bench.worker", str(job_path), "--threads", str(threads)],
                            env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not cell_path.exists():
        tail = log_path.read_text().strip().splitlines()[-1:] if log_path.exists() else []
        return {**{k: job[k] for k in ("task", "seed")}, "method": job["label"], "commit": git_commit(),
                "error": f"exit {rc}: {' '.join(tail)[:300]} (log: {log_path})"}
    return json.loads(cell_path.read_text())


def check_job(job: dict) -> None:
    """Fail before anything runs when a job's method or options are wrong (one clear message)."""
    from trust_unlearn.methods import get_method
    from trust_unlearn.unlearn import _typed

    if job["label"] == ORIGINAL:
        return
    cls = get_method(job["method"])
    cfg = _typed(cls.config_cls, job["settings"]["method_args"], job["label"])
    if hasattr(cfg, "validate"):
        cfg.validate()
    from trust_unlearn.methods.base import CommonConfig

    _typed(CommonConfig, job["settings"]["common"], job["label"]).validate()
    if any(c < 1 for c in job["checkpoints"]):
        raise UserError("checkpoint steps must be at least 1")
