# nbcloud: `make run` starts the platform on its embedded default,
# `make test` runs the whole test suite. Both set everything up first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8000

.PHONY: run test bench bench-billing install sysdeps envs code-server docker-images image compose-config migrate lint format clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(STAMP)

# What pip cannot bring: bubblewrap (the editors' sandbox), Debian's
# python3-venv (environments are built from /usr/bin/python3, which the
# unprivileged sandbox users can run), chromium (the browser tests) and
# openssh-server (the tests' git server for ssh:// volumes).
sysdeps:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q $$missing || (apt-get update -q && apt-get install -y -q $$missing)) >/dev/null; \
	  else \
	    echo "nbcloud needs:$$missing. Run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

envs: install sysdeps
	$(PY) manage.py buildenvs conda

migrate: install
	$(PY) manage.py migrate --noinput

run: install sysdeps envs migrate
	$(PY) manage.py runplatform --port $(PORT)

# code-server for the vscode editor, installed once under /var/lib/nbcloud/code-server
# (NBCLOUD_CODE_SERVER_DIR). Needs Node.js 20; `make run` does not need it (the first
# vscode notebook on a host installs it).
code-server: install
	@if command -v node >/dev/null && node --version | grep -q '^v20\.'; then \
	  $(PY) manage.py installcodeserver; \
	else echo "code-server: skipped (needs Node.js 20); the vscode tests will be skipped"; fi

# The docker runtime's images, each skipped while up to date: the base (debootstrap
# into `docker import`; root, docker and debootstrap) and the conda environment's.
docker-images: install
	environments/base/build-base.sh
	$(PY) manage.py buildimages conda

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

# The full stack's compose file, checked without an engine.
compose-config:
	@command -v docker-compose >/dev/null || apt-get install -y -q docker-compose >/dev/null \
	  || (apt-get update -q && apt-get install -y -q docker-compose >/dev/null)
	docker-compose --env-file compose/.env.example -f compose/docker-compose.yml config -q

test: install sysdeps envs code-server
	$(PY) -m pytest

bench: install sysdeps envs
	$(PY) bench/start_latency.py --runs 5

bench-billing: install
	DATABASE_URL=$${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/nbcloud_bench} $(PY) bench/billing_tick.py --repeat 5

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var/test
