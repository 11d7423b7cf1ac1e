# `make demo` and `make test` set up .venv themselves (python3 -m venv + pip), then run.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.reluinv-installed

.PHONY: setup demo lint test test-all bench bench-fig4 clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml requirements/setup.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/setup.txt
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/reluinv reproduce --quick --out reluinv-out

# Lint (ruff), format check and types (mypy, strict on the maths core): `make test` runs it first.
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(PY) benchmarks/preimage_speed.py
	$(PY) benchmarks/cold_start.py
	$(PY) benchmarks/qr_floors.py
	$(PY) benchmarks/spectra_speed.py
	$(PY) benchmarks/invariance_speed.py

# The full Figure 4 scan on Fashion-MNIST's 10,000 test images (Debian's dataset-fashion-mnist),
# and preimages on a trained layer with few active units.
bench-fig4: setup
	test -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  echo "dataset-fashion-mnist not installed: the benchmarks fall back to other inputs"
	$(PY) benchmarks/fig4_scan.py
	$(PY) benchmarks/preimage_trained.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
