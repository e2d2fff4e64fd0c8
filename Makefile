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
# System (Debian) packages the tests use: a real single-node Slurm (tests/slurm_cluster.py).
# One list for every worker's needs; `make system-deps` installs what is missing.
DEBIAN_PACKAGES := slurm-wlm munge

.PHONY: setup system-deps book study test bench clean distclean

setup: $(STAMP)

# torch is installed first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[book,dev,slurm]"
	$(PY) -m ipykernel install --sys-prefix --name privrad --display-name "privrad (.venv)" >/dev/null
	touch $(STAMP)

# Installs the missing DEBIAN_PACKAGES with apt-get when run as root; otherwise says which are
# missing (the tests that need them are then skipped, each with its reason).
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing system packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing >/dev/null \
			|| echo "privrad: apt-get could not install $$missing; the tests that need them will be skipped."; \
	else \
		echo "privrad: system packages missing ($$missing): run 'make system-deps' as root, or the tests that need them are skipped."; \
	fi

study: setup
	$(VENV)/bin/privrad study run --profile $(PROFILE) --jobs $(JOBS)

book: study
	$(VENV)/bin/privrad book build --profile $(PROFILE)

test: setup system-deps
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf _build .pytest_cache

distclean: clean
	rm -rf $(VENV) results data/simulated data/cache
