VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all install run check test test-faults bench clean image

all: install

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: install
	$(VENV)/bin/hookstream run

# Lint, types and the one direction of dependency between the packages.
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_layers.py

test: install
	$(PY) -m pytest -q -m "not faults_long"

# The reliability and security suite in full: faults under load, floods, fuzzing (tests/faults).
# Figures of the run: tests/faults/last-run.json.
test-faults: install
	$(PY) -m pytest -q tests/faults

# make bench [BENCH_ARGS=--quick]: every benchmark, a table, bench/results.json and bench/results.png.
# Installs the bench extras (matplotlib, py-spy) when missing. wrk is used when installed
# (apt-get install -y wrk); without it the ingress throughput runs use bench/loadgen.py instead.
bench: install
	@$(PY) -c "import matplotlib" 2>/dev/null && test -x $(VENV)/bin/py-spy || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run $(BENCH_ARGS)

# The container image that deploy/compose.yaml and deploy/kubernetes name: hookstream:<version>, the
# version being pyproject.toml's [project] version (tests/deploy checks the three agree).
image:
	docker build -f deploy/Dockerfile -t hookstream:$(shell python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') .

clean:
	rm -rf $(VENV) .data
