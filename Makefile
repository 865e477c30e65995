# The two commands a new machine needs: `make run` (or docker compose up --build) and
# `make test`. Everything else here is what those two are made of.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run run-cluster run-ha test lint unit manifests e2e soak bench format clean

run:
	docker compose up --build --scale client=3

# Cluster mode (README): three broker replicas over one Valkey, behind HAProxy on :8000.
run-cluster:
	docker compose -f docker-compose.yml -f docker-compose.cluster.yml up --build \
		--scale broker=3 --scale client=3

# The same over replicated Valkey: a primary, two replicas, three Sentinels (README).
run-ha:
	docker compose -f docker-compose.yml -f docker-compose.cluster.yml \
		-f docker-compose.ha.yml up --build --scale broker=3 --scale client=3

$(BIN)/.installed: requirements-dev.txt services/*/requirements.txt cli/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# the `groker` command line tool; its dependencies are pinned in requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e ./cli
	touch $@

# Lint, the unit tests of the three services, then the end-to-end tests against the real
# compose deployment (which they build and start themselves, and tear down after).
test: lint
	$(BIN)/python -m pytest

# What CI's lint job runs. zizmor audits .github/ (the workflow, dependabot) offline: no
# GitHub token, and the audits that need the API are skipped.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/zizmor --offline .

unit: $(BIN)/.installed
	$(BIN)/python -m pytest services cli/tests

manifests: $(BIN)/.installed
	$(BIN)/python -m pytest tests/k8s

e2e: $(BIN)/.installed
	$(BIN)/python -m pytest tests/e2e

# Soak the compose deployment: SOAK_SECONDS at SOAK_RATE msg/s; reports lost (must be 0).
SOAK_SECONDS ?= 60
SOAK_RATE ?= 100
soak: $(BIN)/.installed
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --rate $(SOAK_RATE)

# Benchmarks, each against a baseline from the same run (bench/run.py): prints a table,
# writes bench/results/latest.json and fanout.png. Needs Debian's wrk (apt-get install wrk)
# and Docker for the compose one. BENCH_ARGS=--short: a few seconds each, for CI.
BENCH_ARGS ?=
bench: $(BIN)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	docker compose down -v --remove-orphans
	rm -rf $(VENV) .pytest_cache .ruff_cache
