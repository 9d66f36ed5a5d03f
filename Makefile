# adafocus-pl: every target sets up .venv itself, so any of them works as the first command on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# W&B never asks for an account: offline unless the user exports WANDB_MODE=online.
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export HYDRA_FULL_ERROR ?= 1
# Python caches compiled bytecode in the venv on first import (installs use --no-compile). An environment that sets
# PYTHONDONTWRITEBYTECODE would make every process (stage, worker, test subprocess) compile torch, Lightning, sympy
# and scipy from source again on each start (docs/performance.md).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help install train seeds sweep search report dashboard notebook bench test test-full lint data clean clean-logs

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# torch/torchvision are pinned in setup.cfg (2.14.1 / 0.29.1: they install from the local wheel store);
	# --no-compile: modules are byte-compiled when first imported, not all ~40k of them now (a minute less)
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project (editable, with dev extras)

data: $(STAMP)  ## generate the synthetic benchmark (skipped when it exists)
	$(BIN)/python -m adafocus_pl.data.synthetic

# overrides for make train / make seeds (e.g. make train TRAIN="seed=1", make train TRAIN="model.patch_size=48")
TRAIN ?=
SEEDS ?= 0 1 2

train: $(STAMP)  ## run the whole pipeline on the synthetic default
	$(BIN)/python -m adafocus_pl.pipeline $(TRAIN)

seeds: $(STAMP)  ## make train once per seed (SEEDS="0 1 2"), then the report: mean ± std over the seeds
	for seed in $(SEEDS); do $(BIN)/python -m adafocus_pl.pipeline seed=$$seed $(TRAIN) || exit 1; done
	$(BIN)/python -m adafocus_pl.report logs/synthetic

# the synthetic default sweep: patch sizes x AdaFocus/AdaFocus+ (change it: make sweep SWEEP="model.patch_size=16,32 seed=0,1")
SWEEP ?= model.patch_size=24,32,48 plus=off,on seed=0

sweep: $(STAMP)  ## Hydra multirun: the whole stage chain per patch size and variant, then the report
	$(BIN)/python -m adafocus_pl.sweep -m $(SWEEP)

# the synthetic default search: Optuna over Stage II's learning rate and entropy weight, 3 trials (conf/hparams_search;
# change it: make search SEARCH="hparams_search=stage2_optuna hydra.sweeper.n_trials=10 model.patch_size=48")
SEARCH ?= hparams_search=stage2_optuna

search: $(STAMP)  ## Optuna search over Stage II's lr and entropy weight, then its best trial (re-run: only missing trials)
	$(BIN)/python -m adafocus_pl.sweep -m $(SEARCH)

report: $(STAMP)  ## table + accuracy-vs-GFLOPs plot of every run under logs/synthetic
	$(BIN)/python -m adafocus_pl.report logs/synthetic

# extra flags for make dashboard (e.g. DASHBOARD="--entity my-team", DASHBOARD="--dry-run")
DASHBOARD ?=

dashboard: $(STAMP)  ## W&B workspace + report "AdaFocus vs AdaFocus+" of logs/synthetic (without a login: its spec, JSON)
	$(BIN)/python -m adafocus_pl.dashboard logs/synthetic $(DASHBOARD)

# the walkthrough on the runs of make train, saved with its outputs (tables, figures) for a forge's notebook viewer;
# stops with "run `make train` first" when they are missing (notebooks/execute.py)
notebook: $(STAMP)  ## re-execute notebooks/walkthrough.ipynb in place on the runs of make train
	$(BIN)/python notebooks/execute.py notebooks/walkthrough.ipynb

# inference speed on the paper's full-size networks (change it: make bench BENCH="--frames 8 --batch 2")
BENCH ?=

bench: $(STAMP)  ## wall-clock speed: AdaFocus vs the full-frame baselines, then data loading (clips/s)
	$(BIN)/python -m adafocus_pl.bench $(BENCH)
	$(BIN)/python -m adafocus_pl.data.benchmark --synthetic data/synthetic --json logs/bench/data_loading.json

# two pytest workers, one test file each at a time (module fixtures are built once), handed out in the order of
# tests/conftest.py (the long files first) rather than by their number of tests: most tests wait on process start-up
# and imports, so two workers keep the 2-core CI machine busy (docs/performance.md has the figures)
PYTEST_WORKERS ?= -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)  ## run the test suite (slow tests excluded)
	$(BIN)/python -m pytest -m "not slow" -q $(PYTEST_WORKERS)

test-full: $(STAMP)  ## run every test, slow ones included
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check src tests

clean-logs:  ## remove training logs and outputs
	rm -rf logs outputs multirun wandb

clean: clean-logs  ## remove .venv, logs and generated data
	rm -rf $(VENV) data .pytest_cache .ruff_cache
