# Two commands do all set-up on a fresh machine:
#   make book   - create .venv if missing, install pinned deps, execute every chapter, build _build/html
#   make test   - same bootstrap, run the test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test test-slow test-all bench clean-book clean-cache venv chromium teach

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

# One pytest worker per core (pytest-xdist; an idle worker takes tests queued on a busy one). The workers split the
# chapters' smoke runs and share them, and the small book of tests/test_browser.py is built once (tests/conftest.py).
test: $(STAMP) chromium
	$(PY) -m pytest -m "not slow" -q -n auto --dist worksteal

# The findings at default scale (reuses _build/results from `make book` when present).
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP) chromium
	$(PY) -m pytest -q -n auto --dist worksteal

bench: $(STAMP)
	$(PY) benchmarks/bench_training.py

clean-book:
	rm -rf _build book/chapters

clean-cache:
	rm -rf .cache/organisms

# Headless Chromium for tests/test_browser.py (Debian packages; installed when missing and we are root). Without
# it the browser tests skip; nothing else depends on it.
chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1; apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "could not install chromium: the browser tests will be skipped"; \
	else echo "chromium not installed (needs root): the browser tests will be skipped"; fi

# Exercise versions of the chapters into book/exercises/ (also done by `make book`).
teach: $(STAMP)
	$(PY) -m lib teach
