# nbcloud: `make run` starts the platform on its embedded default,
# `make test` runs the whole test suite. Both set everything up first.

# Debian's own interpreter by default: the one a fresh machine has, and the one
# CI runs the suite on.
PYTHON ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
BOOTSTRAP := scripts/bootstrap.sh
PORT ?= 8000
# Node.js 20 for code-server (`make test`), from the npm registry; world-readable
# where the editors' sandbox users can run it.
NODE_DIR ?= $(if $(filter 0,$(shell id -u)),/var/lib/nbcloud/node,$(CURDIR)/.node)

.PHONY: run test bench bench-billing install install-test install-dev sysdeps sysdeps-test setup node envs test-envs verify-envs code-server docker-images image compose-config compose-tools compose-up compose-down ci-images ci-stack-up ci-stack-down migrate lint format clean

# System packages come first: creating .venv needs python3-venv.
sysdeps:
	@$(BOOTSTRAP) sysdeps run

sysdeps-test:
	@$(BOOTSTRAP) sysdeps test

# .venv with the project (recreated when an interrupted run left it without pip).
install: sysdeps
	@$(BOOTSTRAP) venv $(PYTHON) run

install-test: sysdeps-test
	@$(BOOTSTRAP) venv $(PYTHON) test

# The test extras (ruff among them) without the test-only system packages.
install-dev: sysdeps
	@$(BOOTSTRAP) venv $(PYTHON) test

# The data directory (NBCLOUD_DATA_DIR, var/ by default: 0700) and, without
# SECRET_KEY, the generated key in it; every manage.py step below needs them.
setup: install
	@$(PY) manage.py setup

envs: setup
	@echo "==> building the conda environment (skipped while up to date)"
	$(PY) manage.py buildenvs conda

# The environments the test suite runs smoke programs of in notebooks
# (tests/catalog/test_environment_smoke.py): the default and one heavy framework.
TEST_ENVS ?= conda pytorch
test-envs: setup
	@echo "==> building the $(TEST_ENVS) environments (skipped while up to date)"
	$(PY) manage.py buildenvs $(TEST_ENVS)

# Every environment (ENVS=all, or FRAMEWORK[:VERSION] ...) built, and its smoke program
# run in a notebook through the platform (RUNTIME=docker: their images, on the docker
# runtime); the results go into environments/README.md.
verify-envs: setup
	$(PY) scripts/verify_envs.py --readme --runtime $(or $(RUNTIME),process) $(or $(ENVS),all)

migrate: setup
	@echo "==> migrating the database"
	$(PY) manage.py migrate --noinput -v 0

run: sysdeps install envs migrate
	$(PY) manage.py runplatform --port $(PORT)

node:
	@$(BOOTSTRAP) node $(NODE_DIR)

# code-server for the vscode editor, installed once under /var/lib/nbcloud/code-server
# (NBCLOUD_CODE_SERVER_DIR) with the Node.js 20 above: a host's explicit step. `make
# run` does not do it; a vscode notebook on a host without it fails to start, naming it.
code-server: setup node
	@echo "==> installing code-server (skipped while installed)"
	PATH=$(NODE_DIR)/bin:$$PATH $(PY) manage.py installcodeserver

# The docker runtime's images, each skipped while up to date: the base (debootstrap
# into `docker import`; root, docker and debootstrap) and the environments' (ENVS:
# FRAMEWORK[:VERSION] ..., or all; conda by default).
ENVS ?=
docker-images: setup
	environments/base/build-base.sh
	$(PY) manage.py buildimages $(if $(filter all,$(ENVS)),--all,$(or $(ENVS),conda))

# The platform's own image (Dockerfile at the root) on the base above. The project's
# dependencies are collected as wheels once per pyproject.toml (var/image-wheels), so
# the build needs no network and Docker's layer cache keeps rebuilds to seconds.
IMAGE ?= nbcloud/platform:latest
WHEELS := var/image-wheels
$(WHEELS)/.stamp: pyproject.toml compose/image-wheels.sh | install
	environments/base/build-base.sh
	compose/image-wheels.sh $(PY) $(WHEELS) nbcloud/base:latest
	@touch $@

image: $(WHEELS)/.stamp
	environments/base/build-base.sh
	DOCKER_BUILDKIT=0 docker build -q --network none -t $(IMAGE) .

# docker-compose (Debian's, v1): the compose files use nothing v2 adds.
compose-tools:
	@command -v docker-compose >/dev/null || apt-get install -y -q --no-install-recommends docker-compose >/dev/null \
	  || (apt-get update -q && apt-get install -y -q --no-install-recommends docker-compose >/dev/null)

# The full stack's compose files, checked without an engine.
compose-config: compose-tools
	docker-compose --env-file compose/.env.example -f compose/docker-compose.yml config -q
	docker-compose --env-file compose/host.env.example -f compose/host.yml config -q

# The full stack on this machine from compose/.env (docs/deployment.md).
COMPOSE := docker-compose -p nbcloud --env-file compose/.env -f compose/docker-compose.yml
compose-up: compose-tools docker-images image
	@test -f compose/.env || { echo "compose/.env is missing: cp compose/.env.example compose/.env, then set every value"; exit 2; }
	$(COMPOSE) up -d

compose-down: compose-tools
	$(COMPOSE) down

# CI's stack (compose/ci.override.yml: Debian stand-ins for the third-party images,
# the platform's own image; a second host joined with compose/host.yml), which
# tests/deploy/test_stack_smoke.py drives; ci-stack-down removes it with its data.
ci-images: compose-tools docker-images image
	compose/ci/build.sh $(PY)

ci-stack-up: ci-images
	compose/ci/stack.sh up

ci-stack-down: compose-tools
	compose/ci/stack.sh down

test: sysdeps-test install-test envs test-envs code-server
	@echo "==> running the test suite"
	PATH=$(NODE_DIR)/bin:$$PATH $(PY) -m pytest

bench: install envs
	$(PY) bench/start_latency.py --runs 5

bench-billing: install
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/nbcloud_bench} $(PY) bench/billing_tick.py --repeat 5

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var/test
