# NetRoller. `make test` and `make pipeline` work as the first command on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# The CPU build that lies on this machine's disk; installed first so that no CUDA build is pulled.
TORCH_CPU := torch==2.13.0
# Where `make pipeline` writes (git-ignored); `make pipeline WORK=/data/netroller` to move it.
WORK ?= work

.PHONY: setup test bench lint pipeline chaos clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m netroller.bench.run

pipeline: setup
	$(BIN)/netroller pipeline --work $(WORK)

chaos: setup
	$(BIN)/python -m netroller.tools.chaos --trials 10 --seed 0

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) work bench-results.json
