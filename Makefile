# navtalk-agent — the two commands a newcomer needs:
#   make demo    the offline demo: the whole agent against the local NavTalk emulator
#   make test    the test suite (installs what it needs first)
# and: make lint, make types, make bench, make clean.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
SYSTAMP = .cache/system-deps.ok

.PHONY: help setup system venv demo test test-fast lint types bench clean

help:
	@echo "make demo   - run the offline demo against the local NavTalk emulator (writes out/)"
	@echo "make test   - run the test suite (virtual audio + screen are started for it)"
	@echo "make lint   - ruff;  make types - mypy --strict;  make bench - benchmarks"

setup: system venv

# System packages (PortAudio, PulseAudio, Xvfb, espeak-ng, ...), installed only when missing.
system: $(SYSTAMP)
$(SYSTAMP): scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	@mkdir -p .cache && touch $@

venv: $(STAMP)
# requirements/lock-py311.txt pins the runtime dependencies (scripts/lock.py writes it;
# scripts/check-wheels.sh proves each has x86-64 and aarch64 wheels).
LOCK = requirements/lock-py311.txt
$(STAMP): pyproject.toml examples/reception-tools/pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev]" -e examples/reception-tools
	@touch $@

demo: setup
	scripts/with-virtual-devices.sh $(PY) -m agent.apps.demo $(DEMO_ARGS)

test: setup
	scripts/with-virtual-devices.sh $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check agent services hardware tests bench examples
	$(VENV)/bin/ruff format --check agent services hardware tests bench examples

types: venv
	$(VENV)/bin/mypy

bench: setup
	scripts/with-virtual-devices.sh $(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf out bench/results .pytest_cache .mypy_cache .ruff_cache
