# The two commands of the README: `make run` (the service on its embedded store, with the
# simulator) and `make test`. Both create .venv and install the project when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test check lint run demo simulate bench screenshots clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The tests in two runs: those in one process (-m "not e2e") spread over TEST_PROCESSES
# processes (most wait on sockets and timers, not the CPU), then the end-to-end tests one at a
# time (each starts its own processes and some measure time). One coverage report for both.
TEST_PROCESSES ?= 3

test: lint
	deploy/validate.sh
	.ci/ensure_chromium.sh
	export VTW_TEST_REDIS_URL="$$($(BIN)/python .ci/ensure_redis.py)" && \
		$(BIN)/pytest -q -m "not e2e" -n $(TEST_PROCESSES) --cov --cov-report= $(PYTEST_ARGS) && \
		$(BIN)/pytest -q -m e2e --cov --cov-append --cov-report=term $(PYTEST_ARGS)

# A developer's inner loop (~2 min): lint and the tests that start no process and are quick.
check: lint
	VTW_TEST_REDIS_URL="$$($(BIN)/python .ci/ensure_redis.py)" \
		$(BIN)/pytest -q -m "not e2e and not slow" -n $(TEST_PROCESSES) $(PYTEST_ARGS)

# `make run PORT=8001` when 8000 is taken.
PORT ?= 8000

run: $(STAMP)
	$(BIN)/vtwatch dev --demo --port $(PORT)

demo: $(STAMP)
	$(BIN)/vtwatch demo

simulate: $(STAMP)
	$(BIN)/vtwatch simulate --port 5000

# The dashboard screenshots README shows, taken by its browser test.
screenshots: $(STAMP)
	.ci/ensure_chromium.sh
	VTW_SCREENSHOTS_DIR=docs/img VTW_TEST_REDIS_URL="$$($(BIN)/python .ci/ensure_redis.py)" \
		$(BIN)/pytest -q -p no:cacheprovider tests/e2e/test_dashboard_browser.py

bench: $(STAMP)
	$(BIN)/python bench/polling.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage
