# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Set-up is incremental: a second run installs and downloads nothing.
#
# TORCH_INDEX picks another build of the torch trio (same versions), e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu     # CPU-only, ~1 GB instead of ~5 GB
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cu126   # CUDA 12.6
# Empty (default): PyPI's build of torch 2.11.0 (CUDA 13.0, runs on CPU too).

SHELL := /bin/bash
.DEFAULT_GOAL := help
TORCH_INDEX ?=
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(TORCH_INDEX)' | md5sum | cut -c1-8)
export UV_PYTHON_DOWNLOADS := never
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

.PHONY: help setup system-deps demo test check bench bench-synthetic bench-deploy bench-kd doctor ui list clean

help:
	@echo "make demo    - set up, then run the end-to-end demo on the built-in GMNotes dataset"
	@echo "make test    - set up, then check lint, formatting and types (make check) and run the test suite"
	@echo "make doctor  - print versions, CUDA, audio loading, SoundFonts and the MLflow store"
	@echo "make ui      - MLflow UI for the local store on http://127.0.0.1:5000"
	@echo "make list    - list the registered components"
	@echo "make bench   - data-pipeline vs pure-model training throughput (ARGS='hydra overrides')"
	@echo "make bench-synthetic - student throughput on synthetic log-mel, no dataset (ARGS='--device cuda --batch 256')"
	@echo "make bench-deploy - per-clip latency of the deployment forms (whole ONNX graph vs numpy front end + network)"
	@echo "make bench-kd - epoch time of offline / online KD against student-only (ARGS='hydra overrides')"

setup: system-deps $(STAMP)

system-deps:
	@scripts/system-deps.sh

.bootstrap/bin/uv:
	python3 -m venv .bootstrap
	.bootstrap/bin/pip install -q uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(if $(findstring .bootstrap,$(UV)),.bootstrap/bin/uv)
	$(UV) sync --locked --group dev
ifneq ($(TORCH_INDEX),)
	$(UV) pip install --python $(PY) --reinstall --index-url $(TORCH_INDEX) $(TORCH_PINS)
endif
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(PY) -m core.run experiment=demo

test: setup check
	$(PY) -m pytest

# The habits that keep the code as it is: ruff (lint + format), mypy over core/ (pyproject.toml);
# the layering and plugin-contract checks are tests (tests/test_layering.py, tests/core/registry/).
check: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: setup
	$(PY) -m benchmarks.train_throughput $(ARGS)

bench-synthetic: setup
	$(PY) -m benchmarks.synthetic $(ARGS)

bench-deploy: setup
	$(PY) -m benchmarks.deployment $(ARGS)

bench-kd: setup
	$(PY) -m benchmarks.kd_overhead $(ARGS)

doctor: setup
	$(PY) -m core.doctor

list: setup
	$(PY) -m core.list

ui: setup
	$(PY) -m mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
	    --default-artifact-root $(CURDIR)/mlruns --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf outputs multirun
