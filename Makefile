# The two commands of the README: `make run` and `make test`. Both set up .venv first if needed.
# `make help` lists every target, from the `## ` note on its line.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# The stamp is named for the dependency lists' content: a checkout that only touches pyproject.toml
# reinstalls nothing, an edited pin reinstalls.
DEPS := $(shell sed -n '/^dependencies = \[/,/^]/p;/^dev = \[/,/^]/p' pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS)
export PATH := $(CURDIR)/$(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: help setup run plan test test-slow lint contract new-data fashion-mnist chromium serve predict ui server compare dag clean

help:  ## this list
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP)  ## create .venv with the pinned packages (every target that needs it does this first)

# torch==2.13.0 takes the local CPU wheel.
$(STAMP):
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# Hydra's Optuna sweeper (hparams_search=optuna): its last release asks for optuna<3, yet runs on
	# the Optuna 4 pinned above, so it goes in without its own requirements.
	$(BIN)/python -m pip install --quiet --no-deps hydra-optuna-sweeper==1.3.0
	# Hydra's Ray launcher (hydra/launcher=ray): it asks for cloudpickle<3, which only its AWS
	# launcher needs, and pip would take MLflow's cloudpickle 3 back to 2.2; Ray, pinned above, is
	# all it uses to run trials on a running cluster.
	$(BIN)/python -m pip install --quiet --no-deps hydra-ray-launcher==1.2.2
	rm -f $(VENV)/.installed*
	touch $(STAMP)

# The tracking store is checked first (sheldon/step/store.py, ~0.1 s): an unreachable server or a broken
# mlflow.db stops here with one line instead of minutes of MLflow's retries and a traceback.
# MLflow retries a request 7 times over ~4 min (tuned for rate-limited hosted servers): a server
# that goes away mid-run fails within ~20 s instead.
run: export MLFLOW_HTTP_REQUEST_MAX_RETRIES ?= 4
run: export MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR ?= 1
# ENV_MANAGER=uv builds each step an environment of its own from its conda.yml (docs/how-to/
# choose-an-environment.md); uv gets the package sources pip is configured with, the root run's build included.
ENV_MANAGER ?= local
# Quiet: a line per step and the summary. VERBOSE=1 (main.verbose=true) shows each step's command,
# inputs and own output, and MLflow's INFO lines, `mlflow run`'s own included.
run: export MLFLOW_LOGGING_LEVEL ?= $(if $(VERBOSE),INFO,WARNING)
RUN := mlflow run . --env-manager $(ENV_MANAGER)$(if $(VERBOSE), -P hydra_options=main.verbose=true)
run: setup  ## the whole pipeline [ENV_MANAGER=local|uv|virtualenv|conda] [VERBOSE=1]
	@python -m sheldon.step.store
	@sources=$$(python -m sheldon.engine.environments $(ENV_MANAGER)) && eval "$$sources" && \
	  echo "$(RUN)" && $(RUN)

# What `make run` would do, step by step: run or cached, and why (docs/explanation/cache.md); runs nothing.
#   make plan [OPTIONS="train_model.lr=0.01"]
plan: setup  ## what make run would do, step by step, and why; runs nothing [OPTIONS=...]
	@python main.py main.plan=true $(OPTIONS)

test: setup  ## the test suite (what CI runs first)
	pytest

test-slow: setup  ## the tests marked slow (minutes each), which CI runs after `make test`
	pytest -m slow

lint: setup  ## ruff check and ruff format --check
	ruff check .
	ruff format --check .

# config.yaml's section of each step matches the step's settings, and its MLproject is current
# (sheldon/engine/contract.py; `python -m sheldon.engine.mlproject` rewrites the MLprojects)
contract: setup  ## config.yaml's step sections match the steps' settings and MLprojects
	python -m sheldon.engine.contract

# A new version of data/raw from a file or folder on disk: download_dataset copies and checks it,
# runs dvc commit + push, and prints the git commands that publish it (docs/how-to/version-data.md).
#   make new-data DATA=~/digits.zip [FORMAT=auto|npz|csv|images]
FORMAT ?= auto
new-data: export MLFLOW_LOGGING_LEVEL ?= WARNING
new-data: setup  ## a new version of data/raw: make new-data DATA=<file or folder> [FORMAT=...]
	@test -e "$(DATA)" || { echo "usage: make new-data DATA=<file or folder on disk> [FORMAT=...]" >&2; exit 2; }
	mlflow run . --env-manager local -P steps=download_dataset \
	  -P hydra_options="data.download_new=true data.source='$$(realpath "$(DATA)")' data.format=$(FORMAT)"

# Fashion-MNIST (70,000 images) from Debian's dataset-fashion-mnist, for
# data.source=package://debian/fashion-mnist and its slow test (skipped, saying why, without it).
fashion-mnist:  ## install Debian's Fashion-MNIST (data.source=package://debian/fashion-mnist)
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "dataset-fashion-mnist is installed"; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq dataset-fashion-mnist \
	    || echo "could not install dataset-fashion-mnist: the Fashion-MNIST test will be skipped"; \
	else echo "no apt-get here: the Fashion-MNIST test will be skipped"; fi

# A headless browser, Debian's chromium, for the slow test that looks at `make ui`'s first screen
# (skipped, saying why, without it).
chromium:  ## install Debian's chromium, for the slow test of make ui's first screen
	@if command -v chromium >/dev/null; then echo "chromium is installed"; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq chromium \
	    || echo "could not install chromium: the MLflow UI test will be skipped"; \
	else echo "no apt-get here: the MLflow UI test will be skipped"; fi

# The champion model (docs/how-to/register-and-serve-models.md), served on 127.0.0.1:$(PORT): POST images to /invocations.
#   make serve [PORT=5001] [MAX_REQUEST_MB=32]   (a larger request body is answered 413)
serve: PORT ?= 5001
serve: setup  ## serve the champion model on 127.0.0.1 [PORT=5001] [MAX_REQUEST_MB=32]
	python -m sheldon.serving.serve model --port $(PORT) $(if $(MAX_REQUEST_MB),--max-request-mb $(MAX_REQUEST_MB))

# A CSV of the champion's predictions for a folder of images, an .npz or a .csv (docs/how-to/register-and-serve-models.md).
#   make predict INPUT=<folder | file.npz | file.csv> [OUTPUT=predictions.csv]
OUTPUT ?= predictions.csv
predict: setup  ## the champion's predictions as CSV: make predict INPUT=<folder | .npz | .csv> [OUTPUT=...]
	@test -n "$(INPUT)" || { echo "usage: make predict INPUT=<folder of images | .npz | .csv> [OUTPUT=...]" >&2; exit 2; }
	python -m sheldon.serving.predict "$(INPUT)" --output "$(OUTPUT)"

# The MLflow UI on the repository's store, at http://127.0.0.1:$(PORT) (docs/how-to/track-and-compare-runs.md); it prints
# the URL of the experiment's runs view.   make ui [PORT=5000]
ui: PORT ?= 5000
ui: setup  ## the MLflow UI on the repository's store, at http://127.0.0.1 [PORT=5000]
	python -m sheldon.serving.serve ui --port $(PORT)

# A team's tracking server on 127.0.0.1:$(SERVER_PORT) (docs/how-to/share-a-team-server.md): mlflow server with
# a database and an S3 bucket for artifacts, which it proxies. Without AWS credentials or
# AWS_ENDPOINT_URL, moto's S3 server stands in for the bucket, and the db is temporary.
#   make server [SERVER_PORT=5000] [DB=postgresql://...] [ARTIFACTS=s3://bucket/prefix]
SERVER_PORT ?= 5000
server: setup  ## a team's tracking server on 127.0.0.1 [SERVER_PORT=5000] [DB=...] [ARTIFACTS=...]
	python -m sheldon.serving.server --port $(SERVER_PORT) $(if $(DB),--db "$(DB)") $(if $(ARTIFACTS),--artifacts "$(ARTIFACTS)")

# Pipeline runs side by side (docs/how-to/track-and-compare-runs.md), from the store `make run` writes (or MLFLOW_TRACKING_URI):
#   make compare [N=10]                            # the latest N pipeline runs
#   make compare SWEEP=latest|<name or run id>     # one sweep's trials
#   make compare DIFF="<run id> <run id>"          # what differs between two, step by step
N ?= 10
compare: setup  ## pipeline runs side by side [N=10] [SWEEP=latest|<name or id>] [DIFF="<id> <id>"]
	@python -m sheldon.engine.compare $(if $(DIFF),--diff $(DIFF),$(if $(SWEEP),--sweep $(filter-out latest,$(SWEEP)),-n $(N)))

# The pipeline's steps and what each reads, as Mermaid text (docs/how-to/track-and-compare-runs.md)
dag: setup  ## the pipeline's steps and what each reads, as Mermaid text
	@python -m sheldon.engine.dag

clean:  ## remove the tracking store, run outputs and checkpoints
	rm -rf mlflow.db mlflow.db-* mlruns mlartifacts wandb outputs checkpoints
