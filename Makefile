# projc: two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,export,mnist,plot]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/projc train models/mlp_digits.onnx

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: $(STAMP)
	$(PY) -m pytest

# docs/ops.md and the README's trainable-ops list are generated (projc/cli/docs.py); tests fail when stale.
docs: $(STAMP)
	$(PY) -m projc.cli.docs

bench: $(STAMP)
	$(PY) benchmarks/projections.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/layouts.py
	$(PY) benchmarks/time_to_accuracy.py

clean:
	rm -rf $(VENV) out .pytest_cache
