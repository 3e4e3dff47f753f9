# Everything a fresh machine needs: `make demo`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= outputs/demo

.PHONY: install install-test demo test lint bench clean

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

demo: install
	$(BIN)/saliency explain sample_images -o $(OUT)

test: install-test
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check saliency_cli tests benchmarks

bench: install-test
	$(BIN)/python benchmarks/chunk_size.py

clean:
	rm -rf outputs saliency-out .pytest_cache
