# The README's two commands are `make run` and `make test`; everything else is optional.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PORT    ?= 8080
PIP     := $(BIN)/pip install -c constraints.txt

# OpenMP's default busy-waiting makes small LAPACK calls 5-10x slower on shared cores.
export OMP_WAIT_POLICY ?= PASSIVE

# Debian packages each goal uses; `system` installs the missing ones where it can (root and
# apt-get; present ones cost one dpkg-query call) and otherwise names what to install:
#   dataset-fashion-mnist     Fashion-MNIST (elsewhere `data` downloads it, SHA-256-verified)
#   chromium chromium-driver  the dashboard's browser test (it fails, not skips, under `make test`)
#   docker-compose            `docker-compose config` of the generated compose files
#   docker.io debootstrap debian-archive-keyring
#                             compose-test: the Docker engine, the base image without a registry
#   python3-venv              only where $(PY) lacks ensurepip (Debian's python3), for the venv
PACKAGES = dataset-fashion-mnist $(shell $(PY) -c 'import ensurepip' 2>/dev/null || echo python3-venv)
test: PACKAGES += chromium chromium-driver docker-compose
compose-test: PACKAGES += docker-compose docker.io debootstrap debian-archive-keyring

.PHONY: run test fuzz install system data lint bench flwr-run compose-test clean

system:
	deploy/debian-packages.sh $(strip $(PACKAGES))

$(BIN)/python: | system
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -q -e '.[dev]'
	touch $(STAMP)

install: system $(STAMP)

# The data set: the system copy, the cache, or a verified download (`python -m common.fetch`).
data: install
	$(BIN)/python -m common.fetch

# The dashboard on http://127.0.0.1:$(PORT), with the quickstart federation launched at startup.
run: data
	$(BIN)/edgefed dashboard --port $(PORT) --launch examples/quickstart.yaml

test: data
	$(BIN)/ruff check .
	EDGEFED_REQUIRE_BROWSER=1 $(BIN)/pytest -q

# The dashboard API walked by schemathesis' stateful phase along the OpenAPI links (minutes).
fuzz: $(STAMP)
	$(BIN)/pytest -q -m fuzz tests/test_schemathesis.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: data
	$(BIN)/python -m bench.ops
	$(BIN)/python -m bench.pareto
	$(BIN)/python -m bench.federated
	$(BIN)/python -m bench.binding
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.cancel

# Plain Flower: `flwr run .` (EXPERIMENT, default the quickstart: 20 SuperNodes) on a local
# SuperLink started before and stopped after the run, in this virtualenv (no `uv sync` per run).
flwr-run: data
	VENV_BIN=$(abspath $(BIN)) EXPERIMENT=$(EXPERIMENT) deploy/flwr-run.sh

# The compose fleet on a real Docker engine (root; installs its Debian packages as above):
# engine (started and stopped here when none runs), image, >= 8 memory-capped device containers,
# a 2-round run through the dashboard API, teardown, a summary. CI runs it after `make test`.
compose-test: data
	$(BIN)/python -m tests.compose_e2e

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
