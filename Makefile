# Set-up is part of every target: a fresh clone needs only `make quickstart` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU wheel first, so that no CUDA build of torch is pulled in (see README).
TORCH  ?= torch==2.13.0

.PHONY: setup quickstart test check lint typecheck format bench bench-smoke clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

quickstart: setup
	$(BIN)/fedsim run scenarios/quickstart.yaml

# Every test, the benchmark smoke runs included.
test: setup
	$(BIN)/pytest -n 2 tests

# Only the benchmark scripts at their smoke size (part of `test` too; about a minute on 2 cores).
bench-smoke: setup
	$(BIN)/pytest -n 2 tests/benchmarks

lint: setup
	$(BIN)/ruff check fedsim strategies clients tests benchmarks
	$(BIN)/ruff format --check fedsim strategies clients tests benchmarks

typecheck: setup
	$(BIN)/mypy fedsim strategies clients

check: lint typecheck test

format: setup
	$(BIN)/ruff format fedsim strategies clients tests benchmarks
	$(BIN)/ruff check --fix fedsim strategies clients tests benchmarks

bench: setup
	$(BIN)/python benchmarks/foundation.py --quick
	$(BIN)/python benchmarks/overhead.py --quick
	$(BIN)/python benchmarks/scale.py --clients 1000 --rounds 3
	$(BIN)/python benchmarks/suites/run.py quickstart_aggregators --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
