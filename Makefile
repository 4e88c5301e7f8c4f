# Every target creates .venv from nothing if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint proto bench faults clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m actors.demo

# Two workers: most tests wait on other threads and processes, so two
# interpreters use both cores (about 10 minutes on two cores; 11 to 12 beside a CPU burner).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check actors tests bench
	$(BIN)/ruff format --check actors tests bench
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m actors._codec._pb.generate

bench: $(STAMP)
	$(BIN)/python -m bench

faults: $(STAMP)
	$(BIN)/python -m bench.faults --faults 100

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
