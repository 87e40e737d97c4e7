# `make test` is the one test command: the README names it and .ci/run calls it. It installs what
# it needs itself, so it works on a fresh machine.
PY ?= python3

.PHONY: install test lint

install:
	$(PY) -m pip install -q -e '.[dev]'

lint: install
	$(PY) -m ruff check src tests benchmarks scripts

test: lint
	@# pytest exits 5 when it collects no test; that is not a failure of the code under test
	$(PY) -m pytest -n 2 -p no:cacheprovider; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc
