# recon-kit: every target sets up what it needs. On a fresh machine: `make demo` or `make test`.
#
#   make venv     .venv with the package (editable) + dev tools; CPU torch wheel via constraints-cpu.txt
#   make kernel   make sure the `python3` Jupyter kernel runs the venv's interpreter
#   make demo     notebooks 01..04 on the built-in demo object -> outputs/demo/ (replaced each time)
#   make test     lint-imports (layer contract in .importlinter), then pytest -m "not gpu" (browser tests need chromium)
#   make lab      JupyterLab on the repository root, notebooks/ open (LAB_IP, LAB_PORT; works as root)
#   make strip    remove outputs/execution counts from notebooks/*.ipynb (nbstripout)
#
# CUDA machine: make venv EXTRAS=dev,gpu CONSTRAINTS=   (no CPU pin; see README "GPU set-up")

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev
CONSTRAINTS ?= constraints-cpu.txt
# outputs/demo is regenerated on every `make demo`
DEMO_ARGS ?= --overwrite
PYTEST_MARK ?= not gpu
PYTEST_ARGS ?=
PYTEST_TIMEOUT ?= 900
# 5 is pytest's "no tests collected": a failure here. PYTEST_RC_FILE, when set, receives pytest's exit status.
PYTEST_RC_FILE ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOK_FILES := $(wildcard notebooks/*.ipynb)

.DEFAULT_GOAL := help
.PHONY: help venv kernel demo test lab strip clean-venv

help:
	@sed -n '2,11p' Makefile | sed 's/^# \{0,1\}//'

# The stamp is rebuilt when the dependency list or the CPU pin changes; otherwise `make venv` does nothing.
$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS))
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check \
		$(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '(CUDA', str(torch.version.cuda) + ')')"
	@touch $@

venv: $(STAMP)

kernel: $(STAMP)
	@$(PY) -m recon_kit.notebooks --check-kernel 2>/dev/null || { \
		$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (recon-kit)" && \
		$(PY) -m recon_kit.notebooks --check-kernel; }

demo: $(STAMP)
	$(PY) -m recon_kit.cli demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check recon_kit scripts tests
	$(VENV)/bin/lint-imports --no-cache
	@echo 'OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "$(PYTEST_MARK)" --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)'
	@rc=0; OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "$(PYTEST_MARK)" --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$(PYTEST_RC_FILE)" ]; then echo $$rc > "$(PYTEST_RC_FILE)"; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); treating this as a failure" >&2; fi; \
	exit $$rc

# JupyterLab serves the repository root (the working directory of every notebook, the CLI and papermill) on
# LAB_IP:LAB_PORT; as root (containers, GPU boxes) it needs --allow-root.
LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
lab: kernel
	@echo "JupyterLab listens on http://$(LAB_IP):$(LAB_PORT)/lab/tree/notebooks (serving $(CURDIR); the login URL with its token follows)"
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --ip=$(LAB_IP) --port=$(LAB_PORT) \
		--ServerApp.port_retries=0 --ServerApp.default_url=/lab/tree/notebooks --no-browser \
		$(if $(filter 0,$(shell id -u)),--allow-root)

strip: $(STAMP)
ifeq ($(NOTEBOOK_FILES),)
	@echo "no notebooks in notebooks/"
else
	$(VENV)/bin/nbstripout $(NOTEBOOK_FILES)
endif

clean-venv:
	rm -rf $(VENV)
