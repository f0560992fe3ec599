# deskmail: `make demo` runs the whole job end to end, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test unit integration faults lint schema bench bench-soak services sink-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

services:
	bash deploy/local-services.sh

demo: $(STAMP) services
	$(BIN)/python deploy/demo.py

test: $(STAMP) services
	$(BIN)/pytest -q -ra tests/unit tests/integration tests/browser

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) services
	$(BIN)/pytest -q tests/integration

# The linter and the type checker, as configured in pyproject.toml (both in the test extra); both always
# run, so one report shows every problem, and either failing fails the target.
lint: $(STAMP)
	status=0; $(BIN)/ruff check . || status=1; $(BIN)/mypy || status=1; exit $$status

# workers/sql/schema.sql: the schema a fresh database has after every migration (pg_dump, normalised);
# tests/integration/test_schema_snapshot.py fails while it differs from what the migrations build.
schema: $(STAMP) services
	$(BIN)/python deploy/schema_snapshot.py

# Private RabbitMQ and PostgreSQL of its own, broken on purpose; writes var/faults-report.md.
faults: $(STAMP) services
	$(BIN)/pytest -q -ra tests/faults

sink-tools:
	bash deploy/install-smtp-sink.sh

bench: $(STAMP) services sink-tools
	$(BIN)/python deploy/bench.py $(BENCH_ARGS)

# Worker memory over 200,000 mails (about ten minutes or more; not part of CI).
bench-soak: $(STAMP) services sink-tools
	$(BIN)/python deploy/bench.py --soak 200000 $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
