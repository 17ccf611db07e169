# The two commands of the README. Each bootstraps .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_FRAMES ?= 50
export DEMO_FRAMES

.PHONY: demo test lint venv demo-model

venv: $(STAMP)

# torch first: its local CPU wheel, so that nothing later pulls a multi-GB CUDA build.
$(STAMP): requirements.txt requirements-dev.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q test

demo: $(STAMP)
	$(PY) -m sonata_ros.demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Rebuilds sonata_ros/models/demo_*.pth from seeds (about 90 min on a 2-core CPU); see README.
demo-model: $(STAMP)
	PY=$(PY) scripts/build_demo_model.sh
