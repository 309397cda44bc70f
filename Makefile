# l2ps — the two commands of the README:
#   make run    set up (virtualenv + install) and run the workflow on a built-in demo
#   make test   set up and run the fast test tier (what CI runs)
# `make test-all` adds the slow tier; `make bench` runs the benchmarks.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
DEMO   ?= $(CURDIR)/demo

# Real Level-1 products beside the project (never copied into it).
TESTDATA := $(abspath $(CURDIR)/../shared/testdata)
ifneq ($(wildcard $(TESTDATA)/README.md),)
export L2PS_TESTDATA := $(TESTDATA)
endif
# numba kernels compiled once and cached inside the virtualenv
export NUMBA_CACHE_DIR := $(CURDIR)/$(VENV)/numba-cache

.PHONY: setup sysdeps run test test-all bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,sixs,grids]"
	touch $(STAMP)

setup: $(STAMP)

# The 6S binary (used only by table generators and accuracy tests) needs libgfortran5.
# Best effort: without it those tests are skipped with a reason.
sysdeps:
	@if ! ldconfig -p 2>/dev/null | grep -q libgfortran.so.5; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgfortran5) >/dev/null 2>&1 \
	      || echo "note: libgfortran5 could not be installed; 6S tests will be skipped"; \
	  else echo "note: libgfortran5 missing; 6S tests will be skipped"; fi; \
	fi

run: setup
	$(BIN)/l2ps demo $(DEMO)
	$(BIN)/snakemake --cores $(CORES) --config parameter_file=$(DEMO)/level2.prm
	@$(BIN)/l2ps demo-summary $(DEMO)

test: setup sysdeps
	$(BIN)/python -m pytest -n $(CORES) -m "not slow" --durations=15

test-all: setup sysdeps
	$(BIN)/python -m pytest -n $(CORES) --durations=25

# The benchmark of benchmarks/README.md (run it on an idle machine; ~1-1.5 h with cached
# scenes). `make bench BENCH_ARGS=--quick`: every part at 1/4 size, one run, a few minutes.
bench: setup
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: setup
	$(BIN)/snakemake --lint --config parameter_file=$(DEMO)/level2.prm

clean:
	rm -rf $(DEMO) .snakemake .pytest_cache
