VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: all install run test bench clean

all: install

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: install
	$(VENV)/bin/hookstream run

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m bench.workers

clean:
	rm -rf $(VENV) .data
