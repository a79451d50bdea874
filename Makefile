# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/synthetic_gtea61

.PHONY: demo test venv clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

# Two workers (pytest-xdist), one per core of a 2-core machine; whole modules per worker, in the
# order tests/conftest.py gives them.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

demo: $(STAMP)
	$(PY) -m datasets.prepare.synthetic --outDir $(DEMO_DATA) --ifMissing
	bash tools/demo.sh $(PY) $(DEMO_DATA)
