# stabaudit developer tasks. Every install step lives here or in pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two stamps in one venv: the runtime install (what `make demo` needs: stabaudit and its runtime
# dependencies) and the dev toolchain on top of it (tests, linters, the distributed extra).
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
# An extra package index for torch, e.g. https://download.pytorch.org/whl/cpu (the CPU build).
TORCH_INDEX ?=
PIP_INSTALL = $(BIN)/pip install --quiet --constraint constraints.txt \
	$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: install install-dev dist test test-wild lint demo bench docs sample-models fuzz browser clean
FUZZ_SECONDS ?= 300

install: $(RUNTIME_STAMP)

install-dev: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

# The dev install holds the runtime one: both stamps are fresh after it.
$(DEV_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'
	touch $(RUNTIME_STAMP) $@

# The wheel and the sdist, in dist/ (python -m build: an isolated build with setuptools>=77).
dist: install-dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist

test: install-dev
	$(BIN)/pytest -q -n 2

# soundness over a domain on the packaged real models (../shared/models/wild/fetch.sh; skipped
# when absent): minutes, so not part of `make test`
test-wild: install-dev
	$(BIN)/pytest -q -n 2 -m wild tests/soundness/test_domain_wild.py

lint: install-dev
	$(BIN)/ruff check stabaudit tests bench scripts fuzz
	$(BIN)/mypy

demo: install
	$(BIN)/stabaudit check sample_models/cnn.onnx
	$(BIN)/stabaudit check sample_models/resnet.pt --threshold lipschitz=1e5 --format json --output demo-report.json
	@echo "gate lipschitz <= 1e5 on sample_models/resnet.pt: passed (exit code 0); JSON report in demo-report.json"

# Headless Chromium for the HTML renderer's browser test (skipped when absent); Debian's package.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

bench: install-dev
	$(BIN)/python bench/run.py --output docs/benchmarks.md

docs: install
	$(BIN)/stabaudit explain --all > docs/theory.md

sample-models: install-dev
	$(BIN)/python scripts/train_sample_models.py --out sample_models

fuzz: install-dev
	$(PIP_INSTALL) -e '.[fuzz]'
	$(BIN)/python fuzz/fuzz_onnx.py -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=6144
	$(BIN)/python fuzz/fuzz_torchscript.py -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=6144
	$(BIN)/python fuzz/fuzz_ts_code.py -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=6144
	$(BIN)/python fuzz/fuzz_config.py -max_total_time=$(FUZZ_SECONDS) -timeout=20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-report.json build dist stabaudit.egg-info
