# The two commands of the README: `make run` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup run test lint contract clean

setup: $(STAMP)

# Reinstalls only when pyproject.toml changes. torch==2.13.0 takes the local CPU wheel.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	mlflow run . --env-manager local

test: setup
	pytest

lint: setup
	ruff check .
	ruff format --check .

# config.yaml, each step's MLproject and its script's arguments agree (sheldon/contract.py)
contract: setup
	python -m sheldon.contract

clean:
	rm -rf mlflow.db mlruns mlartifacts wandb outputs
