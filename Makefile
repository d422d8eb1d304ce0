# Two commands for a fresh machine: `make run` (set-up + the default benchmark) and `make test`
# (set-up + the test suite). Set-up creates .venv and installs tokbench with its dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tokbench-installed

.PHONY: setup run test test-slow lint report results perf clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: setup
	$(BIN)/tokbench run

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	TOKBENCH_SLOW_TESTS=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check tokbench tests

# Rebuild the committed quick report from its run folder (no re-run).
report: setup
	$(BIN)/tokbench report results/quick

# Measure again what results/ holds (the committed quick run, the CPU throughput table, the text run, the
# perf benchmark).
results: setup
	$(BIN)/tokbench run --out results/quick --quiet --fresh
	$(BIN)/python benchmarks/throughput.py --random-weights --tokenizers jpeg-q75 webp-q75 avif-q75 \
	    llamagen-vq16-c2i janus-pro-1b-vq chameleon-vqgan-anole tokenflow-clipb-32k-enhanced \
	    one-d-piece-l-256 titok-l32 siglip-large-patch16-384 --batch-sizes 1 --warmup 1 --iters 3 \
	    --device cpu --out results/throughput
	$(BIN)/tokbench run benchmarks/text.yaml --out results/text --quiet --fresh
	$(BIN)/python benchmarks/perf.py --out results/perf

# Performance benchmark (benchmarks/perf.py): harness overhead, against the PNG pipeline of LlamaGen/TiTok,
# 1-vs-N process scaling, per-family throughput. CPU-sized by default (minutes on 2 cores); on a GPU:
# make perf PERF_ARGS="--preset gpu --out results/perf-gpu"
PERF_ARGS ?=
perf: setup
	$(BIN)/python benchmarks/perf.py --out results/perf $(PERF_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tokbench.egg-info
