# Two commands do everything on a fresh machine:  `make book`  and  `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
# torch and torchvision are pinned to builds this machine has on disk; override for another CUDA build.
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
EXTRAS      ?= book,test
CXR_PROFILE   ?= quick
CXR_DATA_ROOT ?= $(CURDIR)/data/demo
CXR_RUNS_DIR  ?= $(CURDIR)/runs
# runs trained at once by `make runs` (one process each, cores/JOBS threads): 2 trains ~25 % more images/s on 2 cores
JOBS        ?= 2
export CXR_PROFILE CXR_DATA_ROOT CXR_RUNS_DIR
TIMED       := .ci/timed
TESTED      := _tested
comma       := ,
STAMP       := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# jupyter-cache hashes only a notebook's code cells: key the cache on the library's code too
CODE_HASH    = $$(find cxrcore data_prep -name '*.py' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)

.PHONY: help venv vendor data runs book test lint notebooks-test lab clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(TIMED) venv-create $(PYTHON) -m venv $(VENV)
	@# --no-compile: Python compiles the few modules it imports on first use, not all of torch at install time
	$(TIMED) install $(BIN)/pip install --quiet --progress-bar off --no-compile $(TORCH_SPEC) -e ".[$(EXTRAS)]"
	@touch $@

venv: $(STAMP)  ## create .venv and install the project (idempotent)

_vendor/.complete:
	@$(TIMED) vendor bash .ci/vendor-js _vendor

vendor: _vendor/.complete  ## local copies of MathJax, require.js and the widget manager (offline site)

$(CXR_DATA_ROOT)/.complete: | $(STAMP)
	$(TIMED) demo-data $(BIN)/python -m data_prep synth --out $(CXR_DATA_ROOT)

data: $(CXR_DATA_ROOT)/.complete  ## make the embedded demo data if missing

runs: venv data  ## train every chapter's runs not yet in the run cache, two at a time (the chapters read them)
	$(TIMED) runs $(BIN)/python -m cxrcore experiment all --jobs $(JOBS)

book: venv vendor data runs  ## execute every chapter (profile from CXR_PROFILE) and build _build/html
	@mkdir -p _build; if [ "$$(cat _build/.code-hash 2>/dev/null)" != "$(CODE_HASH)" ]; then \
	  echo "cxrcore/data_prep changed: clearing the notebook execution cache"; rm -rf _build/.jupyter_cache; fi
	@echo $(CODE_HASH) > _build/.code-hash
	$(TIMED) book-build $(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

lint: venv  ## ruff over the code and the chapters
	$(TIMED) ruff $(BIN)/ruff check .

# nbmake executes a copy of the book's sources in _tested/ (the committed notebooks keep no outputs; nbmake skips
# any path with _build in it) and keeps their outputs;
# the test build renders that copy without executing the chapters a second time
notebooks-test: venv vendor data runs  ## execute every chapter with nbmake, then build the site from its outputs
	@rm -rf $(TESTED) && mkdir -p $(TESTED) && cp -r _toc.yml book $(TESTED)/ && ln -s $(CURDIR)/_vendor $(TESTED)/_vendor
	@sed 's/^\(  execute_notebooks:\).*/\1 "off"/' _config.yml > $(TESTED)/_config.yml
	$(TIMED) nbmake $(BIN)/pytest --nbmake --overwrite --nbmake-timeout=1800 -p no:cacheprovider --durations=0 $(TESTED)/book
	$(TIMED) book-build $(BIN)/jupyter-book build $(TESTED) --warningiserror --nitpick --keep-going
	@echo "The tested book is at file://$(CURDIR)/$(TESTED)/_build/html/index.html"

test: venv vendor data lint  ## set up, then unit tests, every chapter under nbmake, and a warning-free book build
	$(TIMED) pytest $(BIN)/pytest
	@$(MAKE) --no-print-directory notebooks-test

lab:  ## JupyterLab in the venv (installs the lab extra)
	$(MAKE) venv EXTRAS=book,test,lab
	$(BIN)/jupyter lab book

clean:  ## remove the build, the runs cache and the demo data (keeps .venv)
	rm -rf _build _tested runs data/demo
