# Set-up and main commands. Nothing is needed before `make demo` or `make test` but
# Python 3.11 with venv (torch/torchvision wheels are taken from the machine's pip
# cache/constraints where present, else from PyPI).
PY ?= python3
VENV := .venv
PYBIN := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/demo
CACHE ?= data/raw

.PHONY: install lint demo test test-fast fetch fetch-test-data ingest clean-run bench

$(PYBIN):
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYBIN)
	$(PYBIN) -m pip install --quiet --upgrade pip
	$(PYBIN) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

fetch: install
	$(PYBIN) -m data_tools.fetch_demo --cache $(CACHE)

# What the test suite needs besides the committed fixture: WordNet and the ImageNet synset lists.
fetch-test-data: install
	$(PYBIN) -m data_tools.fetch_demo --cache $(CACHE) --only wordnet imagenet_info

ingest: install
	$(PYBIN) -m pipeline.ingest run_dir=$(RUN_DIR) data.cache=$(CACHE)

# The main job on the demo corpus: fetch what is missing, then run every stage
# (stages whose inputs and config are unchanged are skipped).
demo: fetch
	$(PYBIN) -m pipeline.run run_dir=$(RUN_DIR) data.cache=$(CACHE)

# Lint (ruff), format check (ruff format), type check (mypy over pipeline/, which ships py.typed)
# and the layer order of docs/architecture.md (import-linter contracts in pyproject.toml).
lint: install
	$(PYBIN) -m ruff check pipeline data_tools benchmarks tests
	$(PYBIN) -m ruff format --check pipeline data_tools benchmarks tests
	$(PYBIN) -m mypy
	$(VENV)/bin/lint-imports --no-cache

# Everything (CI): lint, then every test, the slow ones included.
test: install fetch-test-data lint
	$(PYBIN) -m pytest -q

# The loop while developing: every test not marked slow (whole stages, subprocesses, notebooks), no lint.
test-fast: install fetch-test-data
	$(PYBIN) -m pytest -q -m "not slow"

# Benchmarks against the anchors (benchmarks/RESULTS.md, benchmarks/results.json); needs a
# finished demo run (make demo). Extra flags: make bench BENCH_ARGS="--quick --only loader".
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PYBIN) -m pip install --quiet -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PYBIN) -m benchmarks --run-dir $(RUN_DIR) $(BENCH_ARGS)

clean-run:
	rm -rf $(RUN_DIR)
