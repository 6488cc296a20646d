# Two entry points for a newcomer: `make serve` and `make test`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU build first so that pip does not pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

$(BIN)/.installed: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: install serve test lint
install: $(BIN)/.installed

# The bundled 11M-parameter model streams fastest on one torch thread (75 vs 47 tok/s on a
# busy 2-core machine, docs/benchmarks.md); for a bigger model on CPU raise it, e.g.
# `make serve SERVE_THREADS=8 ARGS="--model path/to/checkpoint"`.
SERVE_THREADS ?= 1
serve: install
	OMP_NUM_THREADS=$(SERVE_THREADS) $(BIN)/lodger serve $(ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -x --durations=15 $(ARGS)

lint: install
	$(BIN)/ruff check .
