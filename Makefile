# stabaudit developer tasks. Every install step lives here or in pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint demo bench docs sample-models fuzz browser clean
FUZZ_SECONDS ?= 300

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest -q -n 2

lint: install
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

bench: install
	$(BIN)/python bench/run.py --output docs/benchmarks.md

docs: install
	$(BIN)/stabaudit explain --all > docs/theory.md

sample-models: install
	$(BIN)/python scripts/train_sample_models.py --out sample_models

fuzz: install
	$(BIN)/pip install --quiet -e '.[fuzz]'
	$(BIN)/python fuzz/fuzz_onnx.py -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=6144
	$(BIN)/python fuzz/fuzz_torchscript.py -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=6144
	$(BIN)/python fuzz/fuzz_config.py -max_total_time=$(FUZZ_SECONDS) -timeout=20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-report.json
