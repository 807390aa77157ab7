# megatron_ads — set-up, demo, tests, benchmarks. Everything installs into .venv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned first: 2.13.0 is the CPU build on project machines' local disk. A bare `torch`
# requirement would let pip fetch a multi-GB CUDA build. On a GPU machine set TORCH_SPEC to the
# machine's torch (e.g. TORCH_SPEC="torch" with its own index) or keep the preinstalled one.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint-imports test-unit test-distributed test-gpu bench grpo-tiny tppo-tiny relate-tiny rlpf-tiny sft-seeds generalization cook-sft autoeval-tiny clean

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
	$(BIN)/megatron-ads demo --out runs/demo-$$(date +%Y%m%d-%H%M%S) $(DEMO_ARGS)

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

# Every speed benchmark, one run (~10 min on 2 cores): benchmarks/run_all.py writes benchmarks/results.json and the
# generated block at the top of benchmarks/RESULTS.md, exits 1 if any benchmark failed. Experiments that take tens
# of minutes (grpo-tiny, tppo-tiny, relate-tiny, sft-seeds, generalization) have their own targets. BENCH_ARGS: e.g.
# "--only convert,train". bench-gpu: the GPU subset (FP8 GEMM, trainer tokens/s + MFU, labeling; < 8 min on one
# H100), skipped without CUDA.
BENCH_ARGS ?=
.PHONY: bench-gpu
bench: setup
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

bench-gpu: setup
	$(BIN)/python benchmarks/run_all.py --gpu $(BENCH_ARGS)

# SFT tiny -> GRPO tiny -> held-out eval (issue 14; ~30+ min per seed on 2 cores, so not part of `make bench`).
# GRPO_TINY_ARGS: e.g. "--seeds 3" or "--fast" (a smoke run).
GRPO_TINY_ARGS ?=
grpo-tiny: setup
	$(BIN)/python benchmarks/grpo_tiny.py $(GRPO_TINY_ARGS)

tppo-tiny: setup
	$(BIN)/python benchmarks/tppo_tiny.py --plot benchmarks/plots/tppo_tiny.png $(TPPO_TINY_ARGS)

relate-tiny: setup
	$(BIN)/python benchmarks/relate_tiny.py $(RELATE_TINY_ARGS)

# SFT -> BT performance RM -> GRPO against it with vs without the length penalty (RLPF, issue 15; ~25 min on 2 cores).
# RLPF_TINY_ARGS: e.g. "--seeds 2" or "--fast" (a smoke run).
rlpf-tiny: setup
	$(BIN)/python benchmarks/rlpf_tiny.py $(RLPF_TINY_ARGS)

# The tiny SFT recipe over 3 training seeds, held-out metrics as mean ± std (issue 18; ~30 min per seed on 2 cores).
SFT_SEEDS_ARGS ?= --seeds 3 --parallel 3
sft-seeds: setup
	$(BIN)/python benchmarks/sft_seeds.py $(SFT_SEEDS_ARGS)

# AdNanny Table 8 in shape (issue 18): general-only base -> ads-only SFT vs ads + general mix SFT, held-out general
# NLL / exact match and ads metrics (~25 min on 2 cores). GENERALIZATION_ARGS: e.g. "--fast" (a smoke run).
GENERALIZATION_ARGS ?=
generalization: setup
	$(BIN)/python benchmarks/generalization.py $(GENERALIZATION_ARGS)

cook-sft: setup
	$(BIN)/python benchmarks/cook_sft.py $(COOK_SFT_ARGS)

# MarketingFM AutoEval (issue 15): synthetic ads with hidden truth and noisy "human" labels, a tiny judge
# (launch/configs/autoeval_judge_tiny_cpu.yaml) -> megatron-ads autoeval: Table 8 / Table 9 forms, active sampling and
# the threshold-sweep plot benchmarks/plots/autoeval_tiny.png (~16 min on one core). AUTOEVAL_TINY_ARGS: e.g. "--fast".
AUTOEVAL_TINY_ARGS ?=
autoeval-tiny: setup
	$(BIN)/python benchmarks/autoeval_tiny.py $(AUTOEVAL_TINY_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
