# The whole developer interface: make test, make lint, make demo, make bench.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint format demo bench broker clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# One process by default: with two (a test file each at a time, about half the time) a few
# timing-bound integration tests still fail now and then on two cores.
PYTEST_WORKERS ?= 1

test: lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/tollgate demo

broker: $(STAMP)
	$(BIN)/tollgate broker

bench: $(STAMP)
	$(BIN)/python bench/contract.py
	$(BIN)/python bench/gateway.py --rounds 5 --scale 2
	$(BIN)/python bench/stream.py --events 100000
	$(BIN)/python bench/lake.py --workdir /tmp/bench-lake

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
