"""Small shared helpers: atomic writes, seeding, progress bars, peak memory, a per-phase step timer."""
from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_cpu_threads(requested: int | None = None) -> int:
    """Torch's CPU thread count: `requested`, else OMP_NUM_THREADS / MKL_NUM_THREADS if set, else the cores
    this process may run on (its affinity mask, not the machine's count). Returns the count set."""
    from trust_unlearn.errors import UserError

    if requested is not None and requested < 1:
        raise UserError(f"--threads must be at least 1, not {requested}")
    env = next((os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k, "").isdigit()), None)
    threads = requested or (int(env) if env and int(env) > 0 else len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    return threads


def progress(iterable=None, **kwargs):
    """A tqdm bar with ETA on stderr; the one progress style of the project."""
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


class PhaseTimer:
    """Seconds per named phase of a training step (the per-step profile in log.jsonl).

    `with timer("saliency_trajectory"): ...` adds to that phase; `lap()` returns and clears the step's
    phases. A phase opened inside another is charged to the outer one only (the noise floor's second
    saliency estimate is "noise_floor", not saliency), so the phases of a step never sum to more than it.
    On a GPU every phase boundary synchronises, so a phase is charged for its own kernels.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open = False

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if self._open:
            yield
            return
        _synchronize()
        self._open, start = True, time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self._open = False
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def lap(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


@contextlib.contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary sibling folder; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Training checkpoints hold only tensors and plain values, so they load with weights_only=True."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
