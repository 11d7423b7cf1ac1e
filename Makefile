# `make demo` and `make test` set up .venv themselves (python3 -m venv + pip), then run.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.reluinv-installed

.PHONY: setup demo test test-all bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml requirements/setup.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/setup.txt
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/reluinv demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(PY) benchmarks/preimage_speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
