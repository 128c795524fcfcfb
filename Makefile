# Two commands do everything on a fresh machine:  `make book`  and  `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
# Which Python: PY_ENV=auto (default) creates and uses .venv, unless a conda environment or a virtualenv other than
# our .venv is active (CONDA_PREFIX / VIRTUAL_ENV): then that one, e.g. a conda env with a CUDA build of torch;
# PY_ENV=active uses the active environment (or the $(PYTHON) on PATH); PY_ENV=venv always uses .venv.
PY_ENV      ?= auto
# the innermost active environment: a virtualenv (possibly inside conda), else conda
ACTIVE_ENV  := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
canonical    = $(or $(realpath $(1)),$(abspath $(1)))
USES_ACTIVE_ENV :=
ifeq ($(PY_ENV),active)
  USES_ACTIVE_ENV := 1
else ifeq ($(PY_ENV),auto)
  ifneq ($(strip $(ACTIVE_ENV)),)
    ifneq ($(call canonical,$(ACTIVE_ENV)),$(call canonical,$(VENV)))
      USES_ACTIVE_ENV := 1
    endif
  endif
else ifneq ($(PY_ENV),venv)
  $(error PY_ENV=$(PY_ENV): expected auto (the default), venv (always .venv) or active (the active environment))
endif
ifdef USES_ACTIVE_ENV
  SCRIPTS_OF = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  BIN       := $(if $(strip $(ACTIVE_ENV)),$(ACTIVE_ENV)/bin,$(SCRIPTS_OF))
else
  BIN       := $(VENV)/bin
endif
# torch and torchvision are pinned to builds this machine has on disk; override for another CUDA build.
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
EXTRAS      ?= book,test
CXR_PROFILE   ?= quick
# `make test` executes every chapter in the smoke profile: the quick profile's runs, each on an eighth of its training
# images for at most one epoch, so the test suite checks every chapter end to end in minutes while `make book`
# trains the quick book (README gives the measured time); TEST_PROFILE=quick tests the quick book itself
TEST_PROFILE  ?= smoke
# the demo sites `make data` writes: DEMO=quick (3,000 images per site at 128 px, data/demo) or DEMO=gpu (10,000 per
# site at 320 px, data/demo-gpu: for a GPU without the real downloads; the default with CXR_PROFILE=gpu); an
# interrupted `make data` resumes
DEMO          ?= $(if $(filter gpu,$(CXR_PROFILE)),gpu,quick)
DEMO_ARGS_quick :=
DEMO_ARGS_gpu   := --per-site 10000 --size 320
ifeq ($(filter $(DEMO),quick gpu),)
  $(error DEMO=$(DEMO): expected quick (the default) or gpu)
endif
CXR_DATA_ROOT ?= $(CURDIR)/data/$(if $(filter gpu,$(DEMO)),demo-gpu,demo)
CXR_RUNS_DIR  ?= $(CURDIR)/runs
# runs trained at once by `make runs` (one process each, cores/JOBS threads): 2 trains ~25 % more images/s on 2 cores;
# the unit tests and the chapters under nbmake run in JOBS pytest-xdist workers with as many threads each
JOBS        ?= 2
THREADS_PER_JOB := $(shell n=$$(( $$(nproc) / $(JOBS) )); echo $$(( n > 0 ? n : 1 )))
export CXR_PROFILE CXR_DATA_ROOT CXR_RUNS_DIR
TIMED       := .ci/timed
TESTED      := _tested
comma       := ,
ifdef USES_ACTIVE_ENV
# the stamp lives in this clone (the environment is not ours to mark), one per environment and extras
STAMP       := _build/.installed$(subst /,_,$(BIN))-$(subst $(comma),-,$(EXTRAS))
else
STAMP       := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
endif
# jupyter-cache hashes only a notebook's code cells: key the cache on the library's code and on the settings the
# chapters read (profile, data, runs) too. Sphinx re-reads only the pages whose source changed, so a chapter left
# untouched would keep its old outputs: its doctrees go as well
BUILD_KEY    = $$({ find cxrcore data_prep -name '*.py' | LC_ALL=C sort | xargs cat; \
                  echo "$(CXR_PROFILE) $(CXR_DATA_ROOT) $(CXR_RUNS_DIR)"; } | sha256sum | cut -c1-16)

.PHONY: help venv vendor data runs book test lint notebooks-test notebooks-real-layout chromium site-check lab weights \
        clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
ifdef USES_ACTIVE_ENV
	@test -x $(BIN)/python || { echo "PY_ENV: no python in $(BIN); activate the environment, or PY_ENV=venv for .venv"; exit 1; }
	@echo "installing the project into the active environment $(BIN)/python (keeping its torch; PY_ENV=venv for .venv)"
	@mkdir -p $(@D)
	$(TIMED) install $(BIN)/python -m pip install --quiet --progress-bar off --no-compile $(if $(filter 1,$(NO_DEPS)),--no-deps) -e ".[$(EXTRAS)]"
else
	@test -x $(BIN)/python || $(TIMED) venv-create $(PYTHON) -m venv $(VENV)
	@# --no-compile: Python compiles the few modules it imports on first use, not all of torch at install time
	$(TIMED) install $(BIN)/pip install --quiet --progress-bar off --no-compile $(TORCH_SPEC) -e ".[$(EXTRAS)]"
endif
	@touch $@

venv: $(STAMP)  ## create .venv and install the project (idempotent); a conda env or virtualenv if one is active
ifdef USES_ACTIVE_ENV
	@$(BIN)/python -c 'import sys; print(f"python: {sys.executable} (the active environment; PY_ENV=venv for .venv)"); '\
	'import torch; print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")'
endif

_vendor/.complete-2:
	@$(TIMED) vendor bash .ci/vendor-js _vendor

vendor: _vendor/.complete-2  ## local copies of MathJax, require.js and the widget manager (offline site)

$(CXR_DATA_ROOT)/.complete: | $(STAMP)
	$(TIMED) demo-data $(BIN)/python -m data_prep synth --out $(CXR_DATA_ROOT) --counterfactual remove=drain \
		$(DEMO_ARGS_$(DEMO)) --resume

data: $(CXR_DATA_ROOT)/.complete  ## generate the demo data if missing (DEMO=gpu: the GPU-sized sites)

runs: venv data  ## train every chapter's runs not yet in the run cache, two at a time (the chapters read them)
	$(TIMED) runs $(BIN)/python -m cxrcore experiment all --jobs $(JOBS)

book: venv vendor data runs  ## execute every chapter (profile from CXR_PROFILE) and build _build/html
	@mkdir -p _build; if [ "$$(cat _build/.build-key 2>/dev/null)" != "$(BUILD_KEY)" ]; then \
	  echo "cxrcore/data_prep or the profile, data or runs changed: every chapter executes again"; \
	  rm -rf _build/.jupyter_cache _build/.doctrees; fi
	@echo $(BUILD_KEY) > _build/.build-key
	$(TIMED) book-build $(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

lint: venv  ## ruff over the code and the chapters
	$(TIMED) ruff $(BIN)/ruff check .

# nbmake executes a copy of the book's sources in _tested/ (the committed notebooks keep no outputs; nbmake skips
# any path with _build in it) and keeps their outputs;
# the test build renders that copy without executing the chapters a second time
# $(1): the folder the chapters are copied to, executed in (nbmake keeps their outputs) and built from; $(2): the
# settings the chapters read (profile, data root, runs folder); $(3): a suffix for the stage names
define test-chapters
	@rm -rf $(1) && mkdir -p $(1) && cp -r _toc.yml book $(1)/ && ln -s $(CURDIR)/_vendor $(1)/_vendor
	@sed 's/^\(  execute_notebooks:\).*/\1 "off"/' _config.yml > $(1)/_config.yml
	@# a kernel can intermittently leave an execute request unanswered (jupyter_client issue 922): a cell waits at most
	@# 300 s (every chapter cell reads cached runs and takes well under a minute) and a failed chapter runs once more
	$(2) OMP_NUM_THREADS=$(THREADS_PER_JOB) $(TIMED) nbmake$(3) $(BIN)/pytest --nbmake --overwrite --nbmake-timeout=300 \
	  --reruns 1 -p no:cacheprovider --durations=0 -n $(JOBS) $(1)/book
	$(TIMED) book-build$(3) $(BIN)/jupyter-book build $(1) --warningiserror --nitpick --keep-going
endef

notebooks-test: venv vendor data runs  ## execute every chapter with nbmake (TEST_PROFILE), then build the site from them
	@echo "executing the chapters in the $(CXR_PROFILE) profile"
	$(call test-chapters,$(TESTED))
	@echo "The tested book is at file://$(CURDIR)/$(TESTED)/_build/html/index.html"
	@$(MAKE) --no-print-directory site-check SITE=$(TESTED)/_build/html

# the full profile's code paths without the downloads: the chapters on a copy of the demo data as the real downloads
# hold it (no drawn-sign tables, no masks, no counterfactual films), with runs of their own
REAL_ROOT     := $(CURDIR)/data/demo-real-layout
REAL_RUNS     := $(CURDIR)/runs-real-layout
TESTED_REAL   := _tested-real-layout
REAL_SETTINGS  = CXR_DATA_ROOT=$(REAL_ROOT) CXR_RUNS_DIR=$(REAL_RUNS)

notebooks-real-layout: venv vendor data  ## every chapter on the demo data without its synthetic ground truth
	@echo "executing the chapters in the $(CXR_PROFILE) profile on $(REAL_ROOT): the real datasets' files only"
	$(TIMED) real-layout-data $(BIN)/python -m data_prep real-layout --demo $(CXR_DATA_ROOT) --out $(REAL_ROOT) --force
	$(REAL_SETTINGS) $(TIMED) real-layout-runs $(BIN)/python -m cxrcore experiment all --jobs $(JOBS)
	$(call test-chapters,$(TESTED_REAL),$(REAL_SETTINGS),-real-layout)

SITE ?= _build/html

chromium:  ## install Debian's Chromium for the site check when it is missing (as root, with apt-get)
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  $(TIMED) chromium-install bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null'; \
	else echo "no Chromium, and not root with apt-get: the site check will be skipped (install the chromium package)"; fi

site-check: venv chromium  ## open every page of the built site (SITE=_build/html) in headless Chromium and check it
	$(TIMED) site-check $(BIN)/python tests/site_check.py $(SITE)

test notebooks-test notebooks-real-layout: CXR_PROFILE := $(TEST_PROFILE)

test: venv vendor data lint chromium  ## set up, unit tests, every chapter under nbmake and a warning-free build, on the demo data and its real-layout copy
	@df -h $(CURDIR) $${TMPDIR:-/tmp} | sed 's/^/disk: /'  # a full disk fails tests in odd places: say how full
	OMP_NUM_THREADS=$(THREADS_PER_JOB) $(TIMED) pytest $(BIN)/pytest -n $(JOBS) --dist loadfile --durations=15
	@$(MAKE) --no-print-directory notebooks-test
	@$(MAKE) --no-print-directory notebooks-real-layout

# JupyterLab refuses to start as root (the default user in Docker images and on rented GPU machines) without this
ALLOW_ROOT   = $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS    ?=

lab:  ## JupyterLab on the chapters (installs the lab extra); e.g. LAB_ARGS="--no-browser --ip=0.0.0.0 --port=8888"
	$(MAKE) --no-print-directory venv EXTRAS=book,test,lab
	@echo "JupyterLab prints the URL to open (http://HOST:PORT/lab?token=...) below; on a remote machine, add"
	@echo "LAB_ARGS=\"--no-browser --port=8888\" and forward the port: ssh -L 8888:localhost:8888 USER@HOST"
	$(BIN)/jupyter lab book $(ALLOW_ROOT) $(LAB_ARGS)

weights: venv  ## download the ImageNet weights of the chapters' models into the torch hub cache (needs internet)
	$(TIMED) weights $(BIN)/python -m cxrcore weights fetch

clean:  ## remove the build, the runs cache and the demo data (keeps .venv)
	rm -rf _build _tested _tested-real-layout runs runs-real-layout data/demo data/demo-real-layout
