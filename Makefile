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
export HF_HUB_OFFLINE := 1

# For `make test`: real Postgres and Redis on loopback unless overridden.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/embeddings
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install serve worker test check-services migrate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

migrate: install
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py register_models
	$(PY) manage.py collectstatic --noinput -v0

# Serves the API with gunicorn on http://$(HOST):$(PORT). With no DATABASE_URL/REDIS_URL in
# the environment: the embedded default (SQLite under var/, no Redis, tasks in-process).
serve: migrate
	exec $(VENV)/bin/gunicorn -c config/gunicorn.py config.wsgi

# An embedding worker (needs REDIS_URL): one process per GPU (CUDA_VISIBLE_DEVICES=N), or one per
# CPU host. Consumes `embeddings` and `embeddings-flex`; see platform/README.md.
worker: migrate
	exec $(PY) -m celery -A config worker -Q embeddings,embeddings-flex -l info -n embeddings@%h

check-services: install
	@DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
		$(PY) -m tests.check_services

# The whole suite, against real Postgres and Redis (DATABASE_URL/REDIS_URL override).
test: check-services
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
		$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var
