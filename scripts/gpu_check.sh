#!/usr/bin/env bash
# GPU readiness: seconds/step and peak GPU memory of TRUST (CIP, CSR), SalUn and ESD-x on an
# SD-1.5-sized model with random weights at 512x512 (latent 64x64). One CUDA GPU, no network needed.
#
#   scripts/gpu_check.sh                         # full check, prints a table (<= 8 minutes)
#   scripts/gpu_check.sh --json runs/gpu_check.json
#   scripts/gpu_check.sh --dry-run               # CPU, tiny shapes, same code path (< 1 minute; CI)
#   scripts/gpu_check.sh --methods trust-csr --attention-slicing
#
# Uses .venv/bin/python when present (else python3, or $PY). Every row is also printed as JSON
# (`[gpu_check] {...}`) the moment it is measured, so a cut-off run still leaves its numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
case " $* " in
  *" --dry-run "*) ;;
  *) command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true ;;
esac
# hard stop at 8 minutes; the check itself skips remaining methods after --budget-s (420 s)
exec timeout --signal=INT --kill-after=20 480 "$PY" -m trust_unlearn.gpu_check "$@"
