# Set-up is part of every target: on a fresh machine `make run` or `make test` builds the environment first.
# torch==2.13.0 is installed before everything else so this machine takes its local CPU wheel (and a GPU
# machine the CUDA build of the same release) instead of letting another package pull an unpinned torch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sqn-ray-installed

STUDY  ?= studies/paper-toy-tuned.yaml
OUT    ?= results/paper-toy-tuned
SQN    := $(VENV)/bin/sqn-ray

.PHONY: setup run test test-fast lint check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup                        ## the main job: the default study on embedded Ray -> Parquet -> report
	$(SQN) study run $(STUDY) --out $(OUT) --resume
	$(SQN) eigen --out $(OUT)/eigen.parquet
	$(SQN) report $(OUT)

test: setup                       ## the whole suite, slow end-to-end tests included
	$(PY) -m pytest -q

test-fast: setup                  ## everything but the end-to-end tests marked slow
	$(PY) -m pytest -q -m "not slow"

lint: setup                       ## ruff (pyproject.toml's [tool.ruff]): pycodestyle, pyflakes, bugbear
	$(VENV)/bin/ruff check .

check: setup                      ## the outside contract checks, run as a user would
	@for c in ../shared/checks/*.py; do [ -f "$$c" ] && $(PY) "$$c" || exit 1; done

bench: setup                      ## benchmark ratios (see bench/README.md)
	$(PY) bench/bench_oracle.py --quick
	$(PY) bench/bench_iteration.py --quick
	$(PY) bench/bench_study.py

clean:
	rm -rf $(VENV) results
