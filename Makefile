# Quick start: `make demo` (set up + run TRUST on the embedded testbed) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test check clean

$(BIN)/trust: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned first, so no resolver ever picks another (a CUDA build of several GB)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# only CLIP's BPE vocabulary file is used from open_clip: no dependencies (no torchvision)
	$(BIN)/pip install -q --no-deps open_clip_torch==3.3.0
	touch $@

setup: $(BIN)/trust

demo: setup
	# the bench's checkpoint-sized evaluation (target captions x 4 seeds, unseen retain scenes x 8): the full
	# protocol evaluation is `trust evaluate --model runs/demo-circle --concept circle`
	$(BIN)/trust unlearn --concept circle --out runs/demo-circle --overwrite --json runs/demo-circle.json \
		--eval-arg seen=false --eval-arg target_seeds=4 --eval-arg retain_seeds=8

test: setup
	$(BIN)/python -m pytest

check: setup
	$(BIN)/trust testbed check --json runs/testbed_check.json

clean:
	rm -rf $(VENV) runs .pytest_cache
