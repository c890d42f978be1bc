# gnebook: `make book` renders the book at the `book` profile, `make test` runs every check.
# Both create .venv (Python 3.11) and install the pinned dependencies on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TQDM_DISABLE ?= 1
export PYTHONHASHSEED := 0

.PHONY: all venv book test unit smoke nbval render-smoke bench bench-smoke mutate clean help

help:
	@echo "make book   - execute every chapter at the 'book' profile and render HTML (build/book/_build/html)"
	@echo "make test   - unit tests, smoke execution, nbval re-execution, strict book build"
	@echo "make bench  - the benchmark suite (about 5 min on 2 cores); results in data/results/bench/"
	@echo "make mutate - science mutation testing: do the unit tests and chapters notice planted bugs?"
	@echo "              (tools/mutants.toml; kill matrix in data/results/mutate.json; MUTATE_ARGS=--unit-only ...)"
	@echo "make clean  - remove build outputs (keeps .venv and data/)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,test]'
	touch $(STAMP)

venv: $(STAMP)

book: $(STAMP)
	$(BIN)/python tools/book.py execute --profile book --jobs 2
	$(BIN)/python tools/book.py render --profile book

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q -n 2 --durations=10

# Chapters run side by side: one torch thread per kernel avoids oversubscribing the cores,
# and papermill and nbval must use the same thread count for identical outputs.
smoke nbval: export OMP_NUM_THREADS := 1

smoke: $(STAMP)
	$(BIN)/python tools/book.py execute --profile smoke --force --jobs 2

nbval: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg build/smoke/notebooks/*.ipynb

bench: $(STAMP)
	$(BIN)/python -m benchmarks --all $(BENCH_ARGS)

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --all --smoke $(BENCH_ARGS)

# Not part of `make test`: each mutant reruns unit tests and chapters in a copy of the repo.
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

render-smoke: $(STAMP)
	$(BIN)/python tools/book.py render --profile smoke

test: $(STAMP)
	$(MAKE) unit
	$(MAKE) bench-smoke
	$(MAKE) smoke
	$(MAKE) nbval
	$(MAKE) render-smoke

clean:
	rm -rf build
