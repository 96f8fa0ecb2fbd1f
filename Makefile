# Every target creates .venv on first use and reuses it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The offline copies of MNIST and CIFAR-10 sit beside the checkout on the project's machines.
ifneq ($(wildcard ../shared/data),)
export ADVLS_DATA ?= $(abspath ../shared/data)
endif

.PHONY: setup demo test test-all lint bench docs docs-serve clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned torch pulls several GB of CUDA packages.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,docs]'
	# A test oracle only: its ports of AutoAttack's attacks. --no-deps, as it pins torchvision.
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(STAMP)

# The quick reproduction: 8 runs on real MNIST, both protocols, the report (runs/reproduce/).
# Run it again to re-render; a killed run resumes.
demo: $(STAMP)
	$(BIN)/advls reproduce mnist-quick --jobs 2

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slower"

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The documentation site (MkDocs + Material + mkdocstrings), strict: any warning fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache .hypothesis
