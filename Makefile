# Each target sets up .venv itself (once; later runs only check a stamp file).
#   make demo    int8 recipe on the example checkpoint, into out/demo
#   make test    pytest (extra arguments: make test PYTEST_ARGS='-k recipe -x')
#   make bench   benchmarks/run.py
#   make clean   out/ and caches; make distclean also removes .venv

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv demo test bench clean distclean

help:
	@echo "targets: venv demo test bench clean distclean"

venv: $(STAMP)

# Rebuilt when pyproject.toml changes. torch/torchvision resolve from the local wheels
# on these machines; nothing is pinned here.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/imgcompress apply recipes/int8.yaml examples/espcn_x2.safetensors --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	@if [ -f benchmarks/run.py ]; then \
		$(BIN)/python benchmarks/run.py; \
	else \
		echo "make bench: benchmarks are not written yet (no benchmarks/run.py)" >&2; \
		exit 1; \
	fi

clean:
	rm -rf out/ .pytest_cache/ build/ .mypy_cache/ .ruff_cache/
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -type d -name .partial -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
