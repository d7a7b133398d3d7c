# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install what is missing. torch is installed
# first and pinned to 2.13.0, the local CPU build: never a CUDA download.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedsim-installed
EXTRAS ?= dev,ray

.PHONY: demo test lint install clean-runs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedsim run scenarios/smart-city-small.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check fedsim analysis tests bench

clean-runs:
	rm -rf runs
