# Two entry points on a fresh machine: `make test` (and, later, `make run`).
# Both bootstrap .venv/ themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Without a GPU we install the CPU build of torch (2.13.0 is the release this
# workplace keeps on disk); with one, pip picks the default CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: test venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra
