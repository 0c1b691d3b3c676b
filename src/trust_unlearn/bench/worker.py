"""One (task, method) of a bench in its own process: `python -m trust_unlearn.bench.worker JOB.json`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(job_path: str) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from trust_unlearn.bench.runner import BenchConfig, plan, run_method
    from trust_unlearn.errors import UserError
    from trust_unlearn.pipeline import load_model

    job = json.loads(Path(job_path).read_text())
    cfg = BenchConfig(**job["cfg"])
    try:
        run_method(job["label"], job["task"], cfg, plan(cfg), load_model(cfg.model), job["before"], Path(job["mdir"]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
