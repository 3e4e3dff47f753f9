# Everything a fresh machine needs: `make demo`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= outputs/demo

.PHONY: install install-test browser demo docs test lint bench bench-gpu clean

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# torch and torchvision come from pyproject's ranges (a CUDA build on Linux,
# which also runs on CPU-only machines).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The report's test opens it in a real browser: Debian's chromium (or set SALIENCY_CHROMIUM).
browser:
	@if [ -z "$$SALIENCY_CHROMIUM" ] && ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Chromium (apt-get) for the HTML report's browser test"; \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "no apt-get here: install Chromium and set SALIENCY_CHROMIUM=/path/to/chromium" >&2; exit 1; fi; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

demo: install
	$(BIN)/saliency explain sample_images -o $(OUT) -m all --grid --report
	$(BIN)/python scripts/readme_figure.py $(OUT) $(OUT)/demo-grid.jpg
	@echo "open $(OUT)/report.html, or look at $(OUT)/demo-grid.jpg"

# refresh the README's figure from the demo's output
docs: demo
	mkdir -p docs && cp $(OUT)/demo-grid.jpg docs/demo-grid.jpg

test: install-test browser
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check saliency_cli tests benchmarks

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# every method against its floor and the peers; see BENCHMARKS.md
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py

# the GPU figures of BENCHMARKS.md and the CUDA-only tests (needs a CUDA device)
bench-gpu: $(VENV)/.installed-bench
	PYTHON=$(BIN)/python bash benchmarks/gpu.sh

clean:
	rm -rf outputs saliency-out .pytest_cache
