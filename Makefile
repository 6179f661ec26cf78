# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUNDLES ?= bundles
# Dev mode (make run) leaves the admin endpoints open without a token: loopback only unless HOST is given.
HOST ?= 127.0.0.1
PORT ?= 8000
# torch 2.13.0: a CPU build of it is on the dev/CI machines' disk; elsewhere pip downloads it.
TORCH ?= torch==2.13.0
EXTRAS ?= cpu,train,bench,dev
# The lock: every package the extras above pull in, at the release CI tested (torch aside: TORCH). pip-tools
# writes it (make lock); the Makefile, CI (through it) and the Dockerfile install with it as constraints.
LOCK := constraints.txt

.PHONY: install lock run bundle bundle-movielens test lint format clean

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

install: $(BIN)/.installed

# Re-resolve the lock from pyproject.toml (newest releases allowed by it), against the CPU torch build.
lock: install
	echo "torch==2.13.0+cpu" | $(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links \
	  --extra cpu --extra train --extra bench --extra dev --unsafe-package torch -c /dev/stdin -o $(LOCK) pyproject.toml

# A demo bundle from synthetic data, built only when there is none.
$(BUNDLES)/current: | $(BIN)/.installed
	$(BIN)/python -m model_export --dataset synthetic --out $(BUNDLES)

bundle: $(BUNDLES)/current

# Train on a MovieLens download: make bundle-movielens DATA=path/to/ml-100k
bundle-movielens: install
	$(BIN)/python -m model_export --dataset movielens --data-dir $(DATA) --out $(BUNDLES)

run: $(BUNDLES)/current
	RECO_BUNDLE_PATH=$${RECO_BUNDLE_PATH:-$(BUNDLES)/current} RECO_DEV_MODE=$${RECO_DEV_MODE:-true} \
	$(BIN)/python -m service --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
