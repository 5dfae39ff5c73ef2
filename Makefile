# cellblock: the two commands a new user types are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)

.PHONY: run test setup test-root test-unprivileged lint bench harness fuzz clean

$(VENV)/.setup-done: pyproject.toml scripts/setup.sh
	VENV=$(VENV) ./scripts/setup.sh

setup: $(VENV)/.setup-done

# Sets up, then runs an example through the sandbox with an embedded service.
run: setup
	$(PY) -m supervisor.tools.cli run examples/hello.py

# Every test, as root and again as an unprivileged user (user namespaces).
test: setup lint test-root test-unprivileged

test-root: setup
	$(PY) -m pytest

test-unprivileged: setup
	./scripts/test-unprivileged.sh

lint: setup
	$(VENV)/bin/ruff check protocol supervisor worker tests scripts
	$(VENV)/bin/mypy

# Longer fuzzing than make test's bounded budget (see README, Fuzzing): every
# property of tests/fuzz with FUZZ_EXAMPLES examples each (failures found
# before are replayed first, from .hypothesis/), then the coverage-guided
# ZMTP target for FUZZ_SECONDS where atheris is installed.
FUZZ_EXAMPLES ?= 2000
FUZZ_SECONDS ?= 120
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz CELLBLOCK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -q --timeout 3600
	$(PY) tests/fuzz/atheris_zmtp.py --seconds $(FUZZ_SECONDS)

bench: setup
	$(PY) scripts/bench.py

harness: setup
	$(PY) -m supervisor.tools.cli harness

clean:
	rm -rf $(VENV) bench-results harness-results
