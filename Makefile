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
# Debian packages the tests use, installed by `make system-deps` (run by `make test`) where apt-get
# works as root: Debian's chromium for the book's offline browser test, Slurm and munge for a one-node
# cluster (tests/slurm_cluster.py). One list for every test that needs a system package; where they
# cannot be installed, those tests are skipped and say why.
DEBIAN_PACKAGES := chromium slurm-wlm munge
LAB_PORT ?= 8888
LAB_ARGS ?=

.PHONY: setup system-deps book study test test-fast lab bench clean distclean

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

test: setup system-deps
	$(PY) -m pytest -q

# the unit tests only (no training beyond tiny steps, no notebooks, no book): the edit-test loop
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Installs the missing DEBIAN_PACKAGES; prints one reason and goes on where it cannot.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "system-deps: not installing$$missing: this is not a Debian-like system (no apt-get); the tests that need them are skipped."; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "system-deps: not installing$$missing: apt-get needs root (run 'sudo make system-deps'); the tests that need them are skipped."; \
	else \
	  echo "system-deps: installing$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	  || echo "system-deps: apt-get could not install$$missing; the tests that need them are skipped."; \
	fi

# JupyterLab on the repository's notebooks with the privrad kernel (notebooks/run.ipynb, notebooks/lab.ipynb).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=. --port=$(LAB_PORT) --ServerApp.default_url=/lab/tree/notebooks/lab.ipynb \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf _build .pytest_cache

distclean: clean
	rm -rf $(VENV) results data/simulated data/cache
