# Entry points for a fresh Linux machine with Python 3.11+:
#   make serve   install the service and serve the bundled demo model on port 8000
#   make test    install everything, then lint, type-check, build the docs and run the whole test suite
#   make test-fast  the edit loop: lint, type-check, build the docs and every test not marked slow
#   make docs    build the documentation site into site/ (strict: a broken link fails)
#   make docs-serve  serve it on http://127.0.0.1:8001, rebuilt as the pages change
#   make test-lowest  the service, contract and part of the model tests at the lowest
#                versions pyproject.toml allows, in .venv-lowest (.ci/lowest; CI runs it)
# `make serve MODEL=voc-fcn8s` serves a published model instead (`fcn pretrained --list`):
# made once into models/pretrained/ (the conversion installs torch), then served offline.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_MODEL := models/demo/fcn8s.onnx
MODEL ?=
PRETRAINED_DIR := models/pretrained

.PHONY: serve lint docs docs-serve test test-fast test-lowest demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The service needs no torch: its extra installs in seconds.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,openvino]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,serve,client,dev,openvino]'
	touch $@

# The conversion needs torch; serving never does.
$(VENV)/.pretrained-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,serve]'
	touch $@

ifeq ($(MODEL),)
serve: $(VENV)/.serve-installed
	FCN_MODEL_PATH="$${FCN_MODEL_PATH:-$(DEMO_MODEL)}" $(BIN)/fcn-serve
else
serve: $(VENV)/.serve-installed $(VENV)/.pretrained-installed
	$(BIN)/fcn pretrained '$(MODEL)' --out $(PRETRAINED_DIR)
	FCN_MODEL_PATH='$(PRETRAINED_DIR)/$(MODEL).onnx' $(BIN)/fcn-serve
endif

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The site, strictly: a broken link or anchor, or a page missing from the nav, fails. The
# settings and command-line references are generated from the code (docs/hooks/reference.py).
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2, printed at every build otherwise.
docs: $(VENV)/.dev-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(VENV)/.dev-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8001

test: lint docs
	$(BIN)/pytest

test-fast: lint docs
	$(BIN)/pytest -m "not slow"

test-lowest:
	PYTHON=$(PYTHON) bash .ci/lowest

# Rebuild the demo model from scratch (synthetic data, staged training, export): ~20 min on
# 2 CPU cores, 11.5 of them training the three stages (models/demo/recipe.json's seconds).
demo: $(VENV)/.dev-installed
	PATH="$(CURDIR)/$(BIN):$$PATH" models/demo/build.sh

clean:
	rm -rf $(VENV) .venv-lowest .mypy_cache .ruff_cache .pytest_cache site
