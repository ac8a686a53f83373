# Two entry points, both from a fresh clone: `make run` and `make test`.
# Each creates .venv with the pinned dependencies first (once; redone when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPACE ?= spaces/yolov4_tiny.yaml
PYTEST_ARGS ?=
# Two pytest-xdist workers: one core each on this 2-core machine (TensorFlow's graph building and
# tracing are mostly one thread). Tests of one file, and all test files that start Ray, share a
# worker (tests/conftest.py). TEST_WORKERS=0 runs the suite in this process, one test after another.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS)

.PHONY: run test test-fast smoke setup clean

run: $(STAMP)
	$(BIN)/python -m search run $(SPACE)

smoke: $(STAMP)
	$(BIN)/python -m search run spaces/smoke.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

# Everything but the tests marked slow (clusters, ../shared/real, full-size models).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
# The report's browser test opens report.html in Debian's chromium: installed here when missing and
# we are root; anywhere else (no apt, not root) the set-up goes on and that test skips with the reason.
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: tests/test_report.py's browser tests will skip"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .cache runs
