# The two commands of the README: `make run` (the service on its embedded store, with the
# simulator) and `make test`. Both create .venv and install the project when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint run demo simulate bench screenshots clean

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

test: lint
	deploy/validate.sh
	.ci/ensure_chromium.sh
	VTW_TEST_REDIS_URL="$$($(BIN)/python .ci/ensure_redis.py)" \
		$(BIN)/pytest -q --cov --cov-report=term $(PYTEST_ARGS)

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
