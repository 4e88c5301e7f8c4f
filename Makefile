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

# Three workers on two cores: many tests wait for other processes (a
# paused node, a heartbeat timeout, a command's --timeout), and a third
# worker uses the CPU a waiting one leaves (about 7 minutes, where two
# workers took 9.5).  The suite starts about a thousand Python processes
# (nodes, CLI commands), each importing the package: compiled once here,
# since with PYTHONDONTWRITEBYTECODE set each would compile it again (0.4 s
# of CPU each, about a fifth of the suite).
test: $(STAMP)
	$(BIN)/python -m compileall -q actors tests bench > /dev/null
	$(BIN)/python -m pytest -q -n 3

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
