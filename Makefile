# The README's two commands are `make run` and `make test`; everything else is optional.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PORT    ?= 8080
PIP     := $(BIN)/pip install -c constraints.txt

# OpenMP's default busy-waiting makes small LAPACK calls 5-10x slower on shared cores.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test fuzz install lint bench compose-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard on http://127.0.0.1:$(PORT), with the quickstart federation launched at startup.
run: install
	$(BIN)/edgefed dashboard --port $(PORT) --launch examples/quickstart.yaml

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The dashboard API walked by schemathesis' stateful phase along the OpenAPI links (minutes).
fuzz: install
	$(BIN)/pytest -q -m fuzz tests/test_schemathesis.py

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench.ops
	$(BIN)/python -m bench.pareto
	$(BIN)/python -m bench.fleet

# The compose fleet on a real Docker engine (root; docker.io, docker-compose, debootstrap installed):
# engine (started and stopped here when none runs), image, >= 8 memory-capped device containers,
# a 2-round run through the dashboard API, teardown, a summary. CI runs it after `make test`.
compose-test: install
	$(BIN)/python -m tests.compose_e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
