# Two commands do all set-up on a fresh machine:
#   make book   - create .venv if missing, install pinned deps, execute every chapter, build _build/html
#   make test   - same bootstrap, run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test test-slow test-all bench clean-book clean-cache venv

venv: $(STAMP)

# torch first, pinned, so that no later requirement lets pip choose (and download) a multi-GB build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[book,test]"
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m lib build

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

# The findings at default scale (reuses _build/results from `make book` when present).
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_training.py

clean-book:
	rm -rf _build book/chapters

clean-cache:
	rm -rf .cache/organisms
