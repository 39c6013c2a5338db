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
	$(VENV)/bin/re2tal data synth $(DEMO_OUT)/data --videos 16 --force
	$(PY) scripts/make_checkpoint.py --arch r3d-tiny --out $(DEMO_OUT)/source.safetensors
	$(VENV)/bin/re2tal rewire $(DEMO_OUT)/source.safetensors --out $(DEMO_OUT)/rw --check --force
	$(VENV)/bin/re2tal train-tal --data $(DEMO_OUT)/data --backbone $(DEMO_OUT)/rw --out $(DEMO_OUT)/tal --epochs 10 --force
	$(VENV)/bin/re2tal detect $(DEMO_OUT)/tal $(DEMO_OUT)/data/videos/synth_04.mp4 --plot $(DEMO_OUT)/timeline.png \
		--gt $(DEMO_OUT)/data --top-k 10

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
