# privrad: two commands matter — `make book` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.privrad-installed
TORCH_VERSION ?= 2.13.0
PROFILE ?= default
JOBS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: setup book study test test-fast bench clean distclean

setup: $(STAMP)

# torch is installed first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[book,dev,slurm]"
	$(PY) -m ipykernel install --sys-prefix --name privrad --display-name "privrad (.venv)" >/dev/null
	touch $(STAMP)

study: setup
	$(VENV)/bin/privrad study run --profile $(PROFILE) --jobs $(JOBS)

book: study
	$(VENV)/bin/privrad book build --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

# the unit tests only (no training beyond tiny steps, no notebooks, no book): the edit-test loop
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf _build .pytest_cache

distclean: clean
	rm -rf $(VENV) results data/simulated data/cache
