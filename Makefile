# Two commands do all set-up on a fresh machine: `make demo` and `make test` (`make help` lists all).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/synthetic_gtea61
DEMO_OUT := experiments/demo_ms_op
# TORCH=cpu: PyTorch's CPU-only wheels, for a machine without an NVIDIA GPU (a far smaller .venv)
TORCH ?=
CPU_WHEELS := https://download.pytorch.org/whl/cpu

.DEFAULT_GOAL := help
.PHONY: help venv test demo clean-demo

help:  ## list the targets
	@echo "make TARGET [TORCH=cpu]   (TORCH=cpu: PyTorch's CPU-only wheels when .venv is created)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1|/' | \
		awk -F'|' '{printf "  %-12s %s\n", $$1, $$2}'

venv: $(STAMP)  ## create .venv with the tested versions (constraints.txt)

$(STAMP): requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	$(PY) -m pip install -q -c constraints.txt --index-url $(CPU_WHEELS) torch torchvision
endif
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	touch $(STAMP)

# Two workers (pytest-xdist), one per core of a 2-core machine; whole modules per worker, in the
# order tests/conftest.py gives them.
test: $(STAMP)  ## run the test suite, two workers (creates .venv if missing)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

demo: $(STAMP)  ## synthetic dataset, SAMSOP-Net stages 1 and 2, evaluation (creates .venv if missing)
	$(PY) -m datasets.prepare.synthetic --outDir $(DEMO_DATA) --ifMissing
	DEMO_OUT=$(DEMO_OUT) bash tools/demo.sh $(PY) $(DEMO_DATA)

clean-demo:  ## remove what make demo wrote: experiments/demo_ms_op/ and data/synthetic_gtea61/ (.venv stays)
	rm -rf $(DEMO_OUT) $(DEMO_DATA)
