# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Each pytest worker starts its own fakesnow + PostgreSQL; two fit a 2-CPU CI runner.
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-runtime.txt | cksum | cut -d' ' -f1)
# A virtualenv with exactly the Lambda image's packages (requirements-runtime.txt), for tests/test_image.py
IMAGE_VENV := .venv-image
IMAGE_STAMP := $(IMAGE_VENV)/.installed-$(shell cksum requirements-runtime.txt | cut -d' ' -f1)
IMAGE ?= snowflake-pg-migrate:latest

.PHONY: venv image-venv image demo stack-up stack-down stack-status test lint lint-aws plan clean golden

$(STAMP): requirements.txt requirements-runtime.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

$(IMAGE_STAMP): requirements-runtime.txt
	rm -rf $(IMAGE_VENV)
	$(PYTHON) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --only-binary=:all: -r requirements-runtime.txt
	touch $@

image-venv: $(IMAGE_STAMP)

## image: build the Lambda image (aws/Dockerfile); with buildx, without attestations (Lambda refuses an image index)
image:
	if docker buildx version >/dev/null 2>&1; then \
	  docker buildx build --platform linux/amd64 --provenance=false --load -f aws/Dockerfile -t $(IMAGE) . ; \
	else \
	  docker build --platform linux/amd64 -f aws/Dockerfile -t $(IMAGE) . ; \
	fi

## demo: start the embedded stack, load demo data, migrate it, print the result
demo: venv
	$(PY) -m scripts.local_stack start
	$(PY) -m scripts.local_stack load-demo
	. .stack/env && $(PY) migrate.py --source demo

stack-up: venv
	$(PY) -m scripts.local_stack start

## stack-down: stop the embedded fakesnow and PostgreSQL servers
stack-down: venv
	$(PY) -m scripts.local_stack stop

stack-status: venv
	$(PY) -m scripts.local_stack status

plan: venv
	$(PY) -m scripts.local_stack start
	. .stack/env && $(PY) migrate.py plan --source demo

lint: venv
	$(PY) -m ruff check .

# Node tools from package-lock.json; installed again only when the lock file changes.
node_modules/.installed: package-lock.json
	npm ci --silent --no-audit --no-fund
	touch $@

## lint-aws: validate the state machine (asl-validator) and the SAM template (cfn-lint)
lint-aws: venv node_modules/.installed
	node_modules/.bin/asl-validator --json-path aws/step_functions/migration.asl.json
	$(VENV)/bin/cfn-lint aws/template.yaml

## test: the whole suite against real components (fakesnow server, embedded PostgreSQL)
# Each invocation gets its own temporary root: two suites at once in one checkout would otherwise clean up
# each other's stacks (pytest keeps only its newest numbered directories).
test: venv image-venv lint lint-aws
	@mkdir -p .pytest_tmp
	@tmp=$$(mktemp -d $(CURDIR)/.pytest_tmp/run.XXXXXX); \
	PYTEST_DEBUG_TEMPROOT=$$tmp $(PY) -m pytest -q -n $(TEST_WORKERS); status=$$?; rm -rf $$tmp; exit $$status

## bench-plan: planning queries and seconds per strategy on a 10M-row fakesnow table (PLAN_BENCH_ROWS=200000 for a smoke run)
.PHONY: bench-plan
bench-plan: venv
	$(PY) -m bench.plan_bench

## bench-ledger: claim cost in a ledger of 10,000,000 chunk rows, ids past 2^31 (LEDGER_BENCH_CHUNKS=1000000 for a smoke run)
.PHONY: bench-ledger
bench-ledger: venv
	$(PY) -m bench.ledger_bench

## bench-swap: how long a swap holds the live table (5,000,000 rows, two indexes; SWAP_BENCH_ROWS=500000 for a smoke run)
.PHONY: bench-swap
bench-swap: venv
	$(PY) -m bench.swap_bench

## sfn-sim: the state machine under moto with 10,000 tables and 10,000,000,000 rows (stats and most copies stubbed, 20 s per Plan or Reconcile invocation); figures in bench/results/sfn_sim.json
.PHONY: sfn-sim
sfn-sim: venv
	@mkdir -p .pytest_tmp
	SFN_SIM_TABLES=10000 SFN_SIM_ROWS=10000000000 SFN_SIM_BUDGET=20 PYTEST_DEBUG_TEMPROOT=$(CURDIR)/.pytest_tmp $(PY) -m pytest -q -s \
	  tests/test_sfn_scale.py -k thousands

## bench: throughput on a 5M-row mixed-type table: server COPY limit, end to end (1/2/default threads), write path, read path (BENCH_ROWS=200000 for a smoke run); then bench-incremental and bench-deletes
.PHONY: bench bench-incremental bench-deletes
bench: venv
	$(PY) -m bench.throughput
	$(PY) -m bench.incremental_bench
	$(PY) -m bench.deletes_bench

## bench-incremental: a watermark window after 10% updates + 10% new rows on a 2M-row table, and a run that finds nothing, against PostgreSQL's own COPY + upsert and the engine's import time (INCR_BENCH_ROWS=200000 for a smoke run)
bench-incremental: venv
	$(PY) -m bench.incremental_bench

## bench-deletes: finding and applying 0.1% deleted rows of a 5M-row table (clustered and spread), against its copy (DELETES_BENCH_ROWS=500000 for a smoke run)
bench-deletes: venv
	$(PY) -m bench.deletes_bench

clean: stack-down
	rm -rf .stack

## golden: regenerate tests/golden/*.txt after an intended change to chunking (review the diff!)
golden: venv
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_golden_plans.py
