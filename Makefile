# Two commands matter (see README): `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch, installed before everything else (GPU hosts: TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT
export QUEUES

.PHONY: install serve migrate web worker beat lint test test-fast clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e '.[dev,clients]'
	touch $@

install: $(VENV)/.installed

# The whole platform in the foreground (config/run.py): with no DATABASE_URL/REDIS_URL, a private
# PostgreSQL and Valkey under var/ (from wheels); migrations; then web, one worker on every queue
# and beat under circus. Ctrl-C stops everything.
serve: install
	@exec $(PY) -m config.run serve

# Roles for scaled deployments (they need DATABASE_URL and REDIS_URL; they start no server).
# Release step: migrations + model registry under a database lock (safe from many hosts at once).
migrate: install
	@$(PY) -m config.run migrate

# The HTTP server (granian serving config.asgi, settings in config/web.py) on $(HOST):$(PORT);
# waits for a migrated database.
web: install
	@exec $(PY) -m config.run web

# A Celery worker: QUEUES=embeddings,embeddings-flex (one per GPU) or QUEUES=billing; default all.
worker: install
	@exec $(PY) -m config.run worker

# Celery beat: exactly one per deployment.
beat: install
	@exec $(PY) -m config.run beat

# Architecture checks: import contracts (.importlinter) and no code written twice (pylint's
# duplicate-code at its default threshold; migrations are generated, so excluded).
CODE := accounts administration batches billing config console embeddings limits metering tests bench
lint: install
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --ignore=migrations --score=n $(CODE)

# The whole suite: the architecture checks, then pytest against embedded servers under var/test,
# or DATABASE_URL/REDIS_URL when set.
test: lint
	$(PY) -m config.run test -- $(PYTEST_ARGS)

# The fast subset: no browser, no worker process, no platform processes.
test-fast: lint
	$(PY) -m config.run test -- -m "not browser and not worker and not runtime" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var
