# One entry point for every job. `make test` and `make demo` bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The locks: every package at one version, with the hash of each of its files. The development
# lock holds the `dev` extra (tests, linters, the Temporal binaries) and the build requirement;
# the production lock holds what the image runs, at the same versions.
DEV_LOCK  := requirements/dev.txt
PROD_LOCK := requirements/production.txt

.PHONY: setup test test-instants lint demo run bench chaos clean lock pin-images compose-secrets

CHECK_PYTHON = $(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11"'

$(STAMP): pyproject.toml $(DEV_LOCK)
	@$(CHECK_PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	@# The project itself: its dependencies are all in the lock, and setuptools (pinned there
	@# too) builds it in place, so nothing is fetched unpinned.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The package holds what production runs; the clone's other folders (sandbox, benchmarks,
	@# tests) are made importable here, from wherever a process starts.
	@$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "tapraise-calls-clone.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	@touch $(STAMP)

setup: $(STAMP)

# Two test processes, a module to each at a time (modules share their servers): most tests wait
# on servers, so two of them keep two cores busy. `make test PARALLEL=` runs them in one.
PARALLEL ?= -n 2 --dist loadfile

test: $(STAMP)
	$(PY) -m pytest -q $(PARALLEL)

# The call workflow tests once per kind of instant a call can start at (`make test` runs them at
# the default kind, 03:00 on a working day); see tests/temporal_fixture.py for the kinds.
START_KINDS := weekday-morning weekday-2059 saturday-afternoon sunday holiday dst-night

test-instants: $(STAMP)
	@failed=""; for kind in $(START_KINDS); do \
	  echo "calls starting at: $$kind"; \
	  CALL_TESTS_START=$$kind $(PY) -m pytest -q $(PARALLEL) tests/test_call_workflow.py tests/test_call_faults.py || failed="$$failed $$kind"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed for:$$failed"; exit 1; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy tapraise sandbox workflows activities starter gateway devstack encryption telemetry bench worker.py tests

demo: $(STAMP)
	$(PY) -m starter dev --demo

run: $(STAMP)
	$(PY) -m starter dev

bench: $(STAMP)
	$(PY) -m bench

chaos: $(STAMP)
	$(PY) -m tests.chaos

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache

# Regenerate both locks from pyproject.toml (after any change to its dependencies; the suite
# fails until then). Versions already locked are kept; `make lock LOCK_FLAGS=--upgrade` moves
# every package to its newest allowed version. The resolver runs from a venv of its own, outside
# the clone, so that it never enters the project's environment.
UV_VERSION := 0.13.9
LOCK_TOOLS ?= $(or $(TMPDIR),/tmp)/tapraise-calls-lock-tools
UV         := $(LOCK_TOOLS)/bin/uv
LOCK_FLAGS ?=
LOCK_OPTIONS = --quiet --generate-hashes --python-version 3.11 --python-platform linux \
	--custom-compile-command "make lock" $(LOCK_FLAGS)
# The build requirement (setuptools) is locked too: `make setup` and the image build the project
# without fetching anything unpinned.
BUILD_REQUIRES = $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock:
	@$(CHECK_PYTHON)
	@test -x $(UV) || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet uv==$(UV_VERSION); }
	$(BUILD_REQUIRES) | $(UV) pip compile pyproject.toml - --extra dev $(LOCK_OPTIONS) -o $(DEV_LOCK)
	@# Production: the package's own dependencies, held to the development lock's versions.
	$(BUILD_REQUIRES) | $(UV) pip compile pyproject.toml - -c $(DEV_LOCK) $(LOCK_OPTIONS) -o $(PROD_LOCK)

# Pin every third-party image of docker-compose.yml and the Dockerfile's base image by digest:
# each `name:tag` is resolved at its registry and rewritten `name:tag@sha256:…` (the tag stays
# for the reader; the digest is what is pulled). Needs `docker buildx` and a registry login
# where one is required. Run it again after changing a tag.
pin-images:
	@refs=$$(sed -nE 's/^ *(image:|FROM) +([^ @]+:[^ @]+)(@sha256:[0-9a-f]+)?.*/\2/p' docker-compose.yml Dockerfile \
	  | grep -v '^tapraise-calls' | sort -u); \
	for ref in $$refs; do \
	  digest=$$(docker buildx imagetools inspect "$$ref" --format '{{.Manifest.Digest}}') || exit 1; \
	  echo "$$ref@$$digest"; \
	  sed -i -E "s#^( *image:| *FROM) +$$ref(@sha256:[0-9a-f]+)?#\1 $$ref@$$digest#" docker-compose.yml Dockerfile; \
	done

# The secret files docker-compose.yml mounts, made with random values where missing (an existing
# file is never overwritten). The folder is the owner's alone; the files are readable by the
# containers' own non-root users, which a bind-mounted secret keeps from the host.
SECRETS := secrets

compose-secrets:
	@mkdir -p $(SECRETS) && chmod 700 $(SECRETS)
	@random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }; \
	for name in postgres-password gateway-tokens codec-tokens grafana-admin-password grafana-secret-key; do \
	  test -s $(SECRETS)/$$name || { random > $(SECRETS)/$$name; echo >> $(SECRETS)/$$name; echo "wrote $(SECRETS)/$$name"; }; \
	done; \
	test -s $(SECRETS)/encryption-keys || { \
	  printf 'key-%s=%s\n' "$$(date -u +%Y%m%d)" "$$(head -c 32 /dev/urandom | base64)" > $(SECRETS)/encryption-keys; \
	  echo "wrote $(SECRETS)/encryption-keys"; }
	@chmod 644 $(SECRETS)/*
	@test -s $(SECRETS)/tapraise-private-key.pem \
	  || echo "missing: $(SECRETS)/tapraise-private-key.pem, the TapRaise service account's private key (not needed for the dev profile)"
