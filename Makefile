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

.PHONY: all venv book test unit smoke same-record nbval render-smoke check-html bench bench-smoke bench-book lab mutate clean help

help:
	@echo "make book   - execute every chapter at the 'book' profile and render HTML (build/book/_build/html)"
	@echo "make test   - unit tests, smoke execution, nbval re-execution, strict book build"
	@echo "make lab    - JupyterLab at the 'smoke' profile: chapters open as notebooks (GNE_PROFILE=book make lab for book sizes)"
	@echo "make bench  - the benchmark suite (about 10 min on 2 cores); results in data/results/bench/"
	@echo "make bench-book - the book-sized suite the Performance page falls back on (a few min)"
	@echo "make mutate - science mutation testing: do the unit tests and chapters notice planted bugs?"
	@echo "              (tools/mutants.toml; kill matrix in data/results/mutate.json; MUTATE_ARGS=--unit-only ...)"
	@echo "make clean  - remove build outputs (keeps .venv and data/)"

$(STAMP): pyproject.toml constraints.txt tools/lab-overrides.json5
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[book,test]'
	install -D -m 644 tools/lab-overrides.json5 $(VENV)/share/jupyter/lab/settings/overrides.d/gnebook.json5
	touch $(STAMP)

venv: $(STAMP)

# the book-sized benchmark suite first, alone (a few minutes, only where no full or book-sized
# record exists): run inside the Performance page it would be timed beside another chapter
book: $(STAMP)
	$(BIN)/python -m gnelib.bench --all --book --missing
	$(BIN)/python tools/book.py execute --profile book --jobs 2
	$(BIN)/python tools/book.py render --profile book

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q -n 2 --durations=10 --ignore=tests/after_smoke

# After `smoke`: every chapter's registered run has the key its `gne run` command computes.
same-record: $(STAMP)
	$(BIN)/python -m pytest tests/after_smoke -q

# Chapters run side by side: one torch thread per kernel avoids oversubscribing the cores,
# and papermill and nbval must use the same thread count for identical outputs.
smoke nbval: export OMP_NUM_THREADS := 1

smoke: $(STAMP)
	$(BIN)/python tools/book.py execute --profile smoke --force --jobs 2

nbval: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg build/smoke/notebooks/*.ipynb

bench: $(STAMP)
	$(BIN)/python -m gnelib.bench --all $(BENCH_ARGS)

# the book-sized suite the Performance page shows when no full record exists (a few minutes)
bench-book: $(STAMP)
	$(BIN)/python -m gnelib.bench --all --book $(BENCH_ARGS)

bench-smoke: $(STAMP)
	$(BIN)/python -m gnelib.bench --all --smoke $(BENCH_ARGS)

# JupyterLab on this checkout (jupytext opens book/chapters/*.md as notebooks and saves them
# back to the .md); the chapters' parameters cell reads GNE_PROFILE. Open the printed URL.
lab: export GNE_PROFILE ?= smoke
lab: $(STAMP)
	$(BIN)/jupyter lab --no-browser $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Not part of `make test`: each mutant reruns unit tests and chapters in a copy of the repo.
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS)

render-smoke: $(STAMP)
	$(BIN)/python tools/book.py render --profile smoke

# No raw TeX and no broken internal links in the rendered HTML of every page.
check-html: $(STAMP)
	$(BIN)/python tools/check_html.py build/smoke/_build/html

test: $(STAMP)
	$(MAKE) unit
	$(MAKE) bench-smoke
	$(MAKE) smoke
	$(MAKE) same-record
	$(MAKE) nbval
	$(MAKE) render-smoke
	$(MAKE) check-html

clean:
	rm -rf build
