"""One bench cell in its own process: `python -m trust_unlearn.bench.worker JOB.json [--threads N]`.

Writes the cell next to the job (cell.json); exit code 2 with one line on stderr for bad input."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("job")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from trust_unlearn.bench.cells import run_cell
    from trust_unlearn.errors import UserError
    from trust_unlearn.utils import set_cpu_threads, write_json

    job_path = Path(args.job)
    try:
        set_cpu_threads(args.threads)
        cell = run_cell(json.loads(job_path.read_text()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_json(job_path.with_name("cell.json"), cell)
    return 0


if __name__ == "__main__":
    sys.exit(main())
