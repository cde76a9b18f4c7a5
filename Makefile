# hbfp-hw: the two commands of the README (make demo, make test) bootstrap everything here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core, at most 8. The cocotb builds are cached under a
# file lock, so workers that need the same build wait for one compile. JOBS=0: one process.
JOBS   ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 8 ] && n=8; echo $$n)
XDIST  := $(if $(filter 0 1,$(JOBS)),,-n $(JOBS) --dist worksteal)
SHELL  := /bin/bash
# pip's "Location ... is ignored" lines come from this machine's pip config, not from us.
QUIET_PIP := 2>&1 | { grep -v "is ignored" || true; }

.PHONY: setup test test-slow demo lint bench clean

setup: $(STAMP)

# Re-runs only when pyproject.toml or the constraints change. The constraints pin torch (the
# package declares a range) so that pip takes the local CPU wheel, never the multi-GB CUDA build.
CONSTRAINTS := .ci/constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,torch]' $(QUIET_PIP)
	@touch $(STAMP)

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
test: setup
	@$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/hbfp-hw demo

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/golden_gemm.py --update-docs

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
