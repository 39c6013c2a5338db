# make demo  — the main job on built-in synthetic data (no network, no downloads)
# make test  — ruff + pytest, what CI runs
#
# The virtual environment is created on first use. torch is installed only if the venv lacks it, so a GPU user can
# install the torch build for their CUDA into .venv first (see README) and make will keep it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install test lint demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

demo: install
	$(VENV)/bin/re2tal demo --out $(DEMO_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
