# Two entry points: `make lab` opens the course, `make test` runs every test.
# Both create .venv with Python 3.11 and install the pinned environment on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED_CORPUS := $(wildcard ../shared/data/tinyshakespeare.txt)

.PHONY: setup lab test release doctor benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab notebooks/

test: setup
	PATH="$(abspath $(BIN)):$$PATH" GPTCOURSE_QUICK=1 $(if $(SHARED_CORPUS),GPTCOURSE_CORPUS=$(abspath $(SHARED_CORPUS))) \
		$(BIN)/python -m pytest

release: setup
	$(BIN)/gptcourse release

doctor: setup
	$(BIN)/gptcourse doctor

benchmark: setup
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache
