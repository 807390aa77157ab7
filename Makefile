# megatron_ads — set-up, demo, tests, benchmarks. Everything installs into .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned first: 2.13.0 is the CPU build on project machines' local disk. A bare `torch`
# requirement would let pip fetch a multi-GB CUDA build. On a GPU machine set TORCH_SPEC to the
# machine's torch (e.g. TORCH_SPEC="torch" with its own index) or keep the preinstalled one.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint-imports test-unit test-distributed test-gpu bench grpo-tiny tppo-tiny relate-tiny clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -W ignore -c "import torch, megatron.core, transformers; print('torch', torch.__version__, '| megatron-core', megatron.core.__version__, '| transformers', transformers.__version__)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/megatron-ads demo

lint-imports: setup
	$(BIN)/lint-imports --no-cache

test: setup lint-imports
	$(BIN)/python -m pytest tests -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: setup lint-imports
	$(BIN)/python -m pytest tests -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

test-distributed: setup
	$(BIN)/python -m pytest tests/distributed -q $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/python -m pytest tests/gpu -q -m gpu $(PYTEST_ARGS)

# Benchmarks that need a finished run or take tens of minutes are run by hand (their docstrings say how).
BENCH_SKIP := benchmarks/grpo_tiny.py benchmarks/fp8_agreement.py
bench: setup
	@for b in $(filter-out $(BENCH_SKIP),$(wildcard benchmarks/*.py)); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# SFT tiny -> GRPO tiny -> held-out eval (issue 14; ~30+ min per seed on 2 cores, so not part of `make bench`).
# GRPO_TINY_ARGS: e.g. "--seeds 3" or "--fast" (a smoke run).
GRPO_TINY_ARGS ?=
grpo-tiny: setup
	$(BIN)/python benchmarks/grpo_tiny.py $(GRPO_TINY_ARGS)

tppo-tiny: setup
	$(BIN)/python benchmarks/tppo_tiny.py --plot benchmarks/plots/tppo_tiny.png $(TPPO_TINY_ARGS)

relate-tiny: setup
	$(BIN)/python benchmarks/relate_tiny.py $(RELATE_TINY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
