# projc: two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,export,mnist]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/projc train models/mlp_digits.onnx

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: $(STAMP)
	$(PY) -m pytest

# docs/ops.md: the supported ONNX ops, generated from the op registry (what `projc ops` prints)
docs: $(STAMP)
	$(PY) -c "from projc.ops import format_supported_ops as f; \
	open('docs/ops.md', 'w').write('# Supported ONNX ops\n\n' \
	'Generated from the op registry by make docs; do not edit.\n\n' + f())"

bench: $(STAMP)
	$(PY) benchmarks/projections.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/layouts.py
	$(PY) benchmarks/time_to_accuracy.py

clean:
	rm -rf $(VENV) out .pytest_cache
