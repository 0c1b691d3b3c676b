"""Is an edit of the training engine figure-neutral? Digests of tiny TRUST runs, to compare across two trees.

Short runs of TRUST CIP, CSR, robust mode and a noise-floor run on the test suite's tiny pipeline, each
digested over its delta's tensors (names and bytes, sorted: the safetensors header's key order varies
between processes, so the file's own bytes do not identify the weights). Run it under the code before and
after an edit; equal digests are the check that backs an entry of bench/cells.py FIGURE_NEUTRAL_EDITS.

Usage: PYTHONPATH=TREE/src python scripts/figure_neutral_check.py WORKDIR [--json PATH] [--runs robust ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RUNS = (("cip", "trust", {}), ("csr", "trust", {"reg": "csr"}), ("robust", "trust-robust", {"attack_every": 2}),
        ("noise_floor", "trust", {"noise_floor_every": 1}))
# the shipped testbed with its own scorer (a text-feature cache the tiny CLIP scorer lacks), probing every 2
# steps as every bench cell of TRUST probes (trust-robust's did until 2026-12-06)
TESTBED_RUNS = (("testbed_cip", "trust", {}), ("testbed_robust", "trust-robust", {"attack_every": 2}))


def tensor_digest(path: Path) -> str:
    from safetensors.torch import load_file

    tensors, h = load_file(path), hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--runs", nargs="+", choices=[label for label, _, _ in RUNS + TESTBED_RUNS], default=None,
                        help="only these runs (an edit that reaches one method needs only its run)")
    args = parser.parse_args()
    import trust_unlearn
    from conftest import build_tiny_clip, build_tiny_pipeline, testbed_unlearn_config, tiny_unlearn_config
    from trust_unlearn.unlearn import run_unlearn

    model, clip = args.workdir / "sd-tiny", args.workdir / "clip-tiny"
    if not model.exists():
        build_tiny_pipeline().save_pretrained(model)
        build_tiny_clip(clip)
    result = {"package": str(Path(trust_unlearn.__file__).parent)}
    for label, method, extra in [r for r in RUNS if args.runs is None or r[0] in args.runs]:
        out = args.workdir / f"run-{label}"
        shutil.rmtree(out, ignore_errors=True)
        run_unlearn(tiny_unlearn_config(model, clip, out, method=method, method_args=extra))
        result[label] = tensor_digest(out / "delta.safetensors")
    for label, method, extra in [r for r in TESTBED_RUNS if args.runs is None or r[0] in args.runs]:
        out = args.workdir / f"run-{label}"
        run_unlearn(testbed_unlearn_config(out, method=method, common=dict(probe_every=2, stop=False), method_args=extra),
                    overwrite=True)
        result[label] = tensor_digest(out / "delta.safetensors")
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
