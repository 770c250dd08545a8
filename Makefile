# One entry point for every job. `make test` and `make demo` bootstrap .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-instants lint demo run bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# The package holds what production runs; the clone's other folders (sandbox, benchmarks,
	@# tests) are made importable here, from wherever a process starts.
	@$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()["purelib"], "tapraise-calls-clone.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	@touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The call workflow tests once per kind of instant a call can start at (`make test` runs them at
# the default kind, 03:00 on a working day); see tests/temporal_fixture.py for the kinds.
START_KINDS := weekday-morning weekday-2059 saturday-afternoon sunday holiday dst-night

test-instants: $(STAMP)
	@failed=""; for kind in $(START_KINDS); do \
	  echo "calls starting at: $$kind"; \
	  CALL_TESTS_START=$$kind $(PY) -m pytest -q tests/test_call_workflow.py tests/test_call_faults.py || failed="$$failed $$kind"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed for:$$failed"; exit 1; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy tapraise sandbox workflows activities starter gateway devstack encryption bench worker.py tests

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
