# visionpipe: `make run` trains and evaluates every task on the built-in data; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip serves these from the local wheel cache on the project's machines; pyproject.toml asks for ranges
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export NO_ALBUMENTATIONS_UPDATE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-fast clean-data viz mlflow-ui repro help

help:
	@echo "make run     - set up .venv if needed, then kedro run (every task on the built-in data)"
	@echo "make test    - set up .venv if needed, then run the whole test suite"
	@echo "make install - (re)create the virtual environment"
	@echo "make mlflow-ui / make viz / make repro"

$(BIN)/kedro: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(BIN)/kedro

install: $(BIN)/kedro

run: install
	$(BIN)/kedro run

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

viz: install
	$(BIN)/python -m pip install -e ".[viz]"
	$(BIN)/kedro viz run

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts

repro: install
	source $(BIN)/activate && dvc repro

clean-data:
	rm -rf data/0*/*/ mlflow.db mlartifacts mlruns
