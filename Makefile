# One set-up command, one test command; everything runs from the project's own .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
ARGS   ?=

.PHONY: setup test test-fast lint run server bench

setup:  ## create .venv and install pinned dependencies (CPU torch 2.13.0) + this package
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .

test:  ## the whole suite (starts its own MLflow server on 127.0.0.1)
	$(PY) -m pytest -q

test-fast:  ## everything except @slow
	$(PY) -m pytest -q -m "not slow"

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pipelines tracking models tests bench

run:  ## the main job, no server needed (sqlite:///mlflow.db + ./mlruns); e.g. make run ARGS="-P pooling=avg"
	mlflow run . --env-manager local $(ARGS)

server:  ## local tracking server + UI on http://127.0.0.1:5000 (sqlite:///mlflow.db, ./mlartifacts)
	$(PY) -m pipelines server --port 5000

bench:  ## our trainer vs a seed-style loop, side by side
	$(PY) bench/bench_train.py $(ARGS)
