# One set-up command, one test command; everything runs from the project's own .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
ARGS   ?=

.PHONY: setup lock test test-slow lint run server server-postgres bench demo

setup:  ## create .venv and install the hash-locked dependencies (requirements.lock: CPU torch 2.13.0) + this package
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@if command -v npm >/dev/null; then sh web/build.sh; else echo "npm not found: browser demo not built (web/build.sh)"; fi
	MLFLOW_TRACKING_URI=sqlite:///mlflow.db $(PY) -m pipelines init-store

# requirements.lock = requirements-dev.txt (which includes requirements.txt) resolved on Linux x86_64 / CPython
# 3.11, every package pinned with the sha256 of each of its files. torch: pip's config on our machines
# (/etc/xdg/pip, ~/.config/pip: find-links /opt/wheels) resolves torch==2.13.0 to the local CPU wheel, so the lock
# pins torch==2.13.0+cpu with that wheel's hash only. PyPI's 2.13.0 hashes are deliberately left out: pip prefers
# a file whose index link carries an allowed hash over a find-links file (which carries none), so with them it
# would fetch PyPI's CUDA build (plus nvidia-* packages the lock does not list) instead of the local wheel.
# Elsewhere run `make lock` where the CPU wheel is reachable (e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
lock:  ## regenerate requirements.lock (pinned + hashed) after changing requirements*.txt; needs PyPI
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-find-links --no-emit-index-url -o requirements.lock requirements-dev.txt

test:  ## the test suite without @slow (starts its own MLflow server on 127.0.0.1; ~10 min on 2 cores)
	$(PY) -m pytest -q -m "not slow"

test-slow:  ## the @slow tests: 8 concurrent runs (sqlite, PostgreSQL), dead server, Ray sweeps, ONNX of every model
	$(PY) -m pytest -q -m slow

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check pipelines tracking models tests bench

run:  ## the main job, no server needed (sqlite:///mlflow.db + ./mlruns); e.g. make run ARGS="-P pooling=avg"
	$(PY) -m pipelines init-store
	mlflow run . --env-manager local $(ARGS)

server:  ## local tracking server + UI on http://127.0.0.1:5000 (sqlite:///mlflow.db, ./mlartifacts)
	$(PY) -m pipelines server --port 5000

server-postgres:  ## team tracking server on PostgreSQL ($$PIPELINE_PG_URI or $$PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; db created if missing), artifacts in ./mlartifacts
	$(PY) -m pipelines server-postgres --port 5000 $(ARGS)

bench:  ## our trainer vs a reference-style loop, side by side
	$(PY) bench/bench_train.py $(ARGS)

demo:  ## browser demo of the champion CNN vs the FC model on http://127.0.0.1:8000
	sh web/build.sh
	$(PY) -m pipelines demo
