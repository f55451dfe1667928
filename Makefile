# privtune-ray: `make demo` sets up and runs the demo; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned in the same resolve as the package so pip takes the CPU wheel on disk,
# not the registry's newest CUDA build.
TORCH_SPEC ?= torch==2.13.0

# Everything runs offline: no Hugging Face Hub lookups (each would wait ~25 s before failing here).
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install lint test test-long test-all demo report bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

lint: install  ## ruff (lint + the formatter's layout), mypy and the import layers (lint-imports), as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install
	$(BIN)/pytest

test-long: install  ## the end-to-end runs `make test` leaves out (CI runs them after it)
	$(BIN)/pytest -m long

test-all: install  ## every marker but gpu's own skips: long, slow and the default suite
	$(BIN)/pytest -m ""

demo: install
	out=runs/demo-$$(date +%Y%m%d-%H%M%S) && $(BIN)/privtune-ray train simulations/sst2_demo.yaml --out $$out \
	  && $(BIN)/privtune-ray report $$out

# A fresh quick sweep (6 points as Ray tasks) and a 100-device simulation, then one report over both.
ifndef REPORT_DIR
REPORT_DIR := runs/report-$(shell date +%Y%m%d-%H%M%S)
endif
report: install
	$(BIN)/privtune-ray sweep simulations/sst2_quick.yaml --out $(REPORT_DIR)/sweep
	$(BIN)/privtune-ray simulate simulations/sst2_devices.yaml --out $(REPORT_DIR)/simulation \
	  --set simulation.devices=100 --set simulation.rounds=30 --set train.progress=false
	$(BIN)/privtune-ray report $(REPORT_DIR)

bench: install
	$(BIN)/python benchmarks/bench_training.py --out benchmarks/results/training.json
	$(BIN)/python benchmarks/bench_mechanisms.py --out benchmarks/results/mechanisms.json
	$(BIN)/python benchmarks/bench_attacks.py --out benchmarks/results/attacks.json
	$(BIN)/python benchmarks/bench_simulation.py --out benchmarks/results/simulation.json
	$(BIN)/python benchmarks/bench_communication.py --out benchmarks/results/communication.json

clean:
	rm -rf $(VENV) runs .pytest_cache
