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

.PHONY: install run exps metrics serve test test-fast test-viz clean-data viz viz-build notebook notebook-html mlflow-ui repro plots help \
	tracking-server tracking-server-stop

help:
	@echo "make run     - set up .venv if needed, then visionpipe run (kedro run on every task, quiet, with a summary)"
	@echo "make test    - set up .venv if needed, then run the whole test suite"
	@echo "make install - (re)create the virtual environment"
	@echo "make mlflow-ui - browse runs, models and plots (http://127.0.0.1:5000)"
	@echo "make serve TASK=detection [PORT=5001] [MODEL=models:/<name>@champion] - REST scoring server (README, Serving)"
	@echo "make tracking-server - a team's MLflow server on PostgreSQL (data/server/), in the background; make tracking-server-stop"
	@echo "make viz      - kedro-viz on one task's pipeline (VIZ_TASK=detection ...; others in the left panel)"
	@echo "make notebook - JupyterLab on notebooks/compare_champions.ipynb; make notebook-html renders it"
	@echo "make repro / make plots - dvc repro; dvc plots show, rendered offline; make metrics - every metric, by task"
	@echo "make exps    - dvc experiments: changed parameters and headline metrics (visionpipe exps)"

$(BIN)/kedro: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -e ".[test]"
	touch $(BIN)/kedro

install: $(BIN)/kedro

# `visionpipe run` is `kedro run` with quiet defaults set before Kedro loads its plugins (README, "What the terminal shows").
# Then, in a git + DVC checkout whose parameters are conf/base's alone (what dvc.yaml tracks), `dvc commit` records
# what the run produced in dvc.lock, so `dvc status` is short and true (README, "DVC": which route updates dvc.lock).
run: install
	$(BIN)/visionpipe run
	@if git rev-parse --git-dir >/dev/null 2>&1 && [ -d .dvc ]; then \
	  if ls conf/local/parameters* >/dev/null 2>&1; then \
	    echo "dvc.lock not updated: conf/local/ overrides parameters dvc.yaml does not track (dvc repro runs and records)"; \
	  elif $(BIN)/dvc commit --force; then echo "dvc.lock records this run (dvc status: up to date)"; \
	  else echo "dvc.lock not updated: dvc commit failed (above); the run itself succeeded"; fi; fi

# the experiments at a glance: changed parameters and each task's headline metric (dvc exp show, 160 columns)
exps: install
	$(BIN)/visionpipe exps

# MLflow's scoring server for a registered model (README, "Serving"): `visionpipe serve` runs `mlflow models serve
# --env-manager local` with this venv's bin on PATH (MLflow starts `uvicorn` by name), no activation needed.
TASK ?= classification
PORT ?= 5001
HOST ?= 127.0.0.1
serve: install
	$(BIN)/visionpipe serve --task $(TASK) --host $(HOST) --port $(PORT) $(if $(MODEL),--model-uri $(MODEL))

# Two pytest workers, one test file each (`--dist loadfile`: a file's module fixtures are built once): most tests are
# kedro/dvc subprocesses or single-threaded CPU training, so two cores run the suite in about half the time.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# extras are installed once, on first use
$(BIN)/kedro-viz-installed: pyproject.toml | install
	$(BIN)/python -m pip install -e ".[viz]"
	touch $@

$(BIN)/notebook-installed: pyproject.toml | install
	$(BIN)/python -m pip install -e ".[notebook]"
	touch $@

# Opens on one task's pipeline, expanded (VIZ_TASK=detection ... for another): the default pipeline holds all
# four tasks, about 70 datasets, which kedro-viz fits at 10 % zoom. Choose another task or a stage in the left
# panel's drop-down.
VIZ_TASK ?= classification
VIZ_PORT ?= 4141
viz: $(BIN)/kedro-viz-installed
	@echo "kedro-viz: http://127.0.0.1:$(VIZ_PORT)/?pid=$(VIZ_TASK)&expandAllPipelines=true"
	@( sleep 15 && $(BIN)/python -m webbrowser -t "http://127.0.0.1:$(VIZ_PORT)/?pid=$(VIZ_TASK)&expandAllPipelines=true" >/dev/null 2>&1 ) &
	$(BIN)/kedro viz run --pipeline $(VIZ_TASK) --port $(VIZ_PORT) --no-browser

# A static copy of the viz (build/), the same graph `make viz` serves; tests/test_end_to_end.py checks it.
viz-build: $(BIN)/kedro-viz-installed
	$(BIN)/kedro viz build

test-viz: $(BIN)/kedro-viz-installed
	$(BIN)/python -m pytest tests/test_end_to_end.py -k viz

notebook: $(BIN)/notebook-installed
	$(BIN)/jupyter lab notebooks/compare_champions.ipynb

notebook-html: $(BIN)/notebook-installed
	$(BIN)/jupyter nbconvert --to html --execute notebooks/compare_champions.ipynb --output-dir data/08_reporting

# `dvc plots show` offline: DVC's page loads vega, vega-lite and vega-embed from a CDN and stays blank
# without internet. This template inlines the same versions, taken once from the npm packages (npm pack);
# `make plots` points DVC at it (.dvc/config.local), so a plain `dvc plots show` is offline afterwards too.
DVC_PLOTS_TEMPLATE := .dvc/offline_plots.html
VEGA_NPM := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2  # the versions dvc-render's page asks the CDN for

$(DVC_PLOTS_TEMPLATE):
	@command -v npm >/dev/null || { echo "npm is needed once, to fetch vega, vega-lite and vega-embed from the npm registry"; exit 1; }
	rm -rf .dvc/tmp/vega && mkdir -p .dvc/tmp/vega
	cd .dvc/tmp/vega && npm pack --silent $(VEGA_NPM) >/dev/null
	{ printf '<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset="utf-8">\n<title>DVC plots</title>\n'; \
	  for pkg in $(subst @,-,$(VEGA_NPM)); do \
	    printf '<script>\n'; tar -xOzf .dvc/tmp/vega/$$pkg.tgz package/build/$${pkg%-*}.min.js; printf '\n</script>\n'; \
	  done; \
	  printf '<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'; } > $@.tmp
	mv $@.tmp $@
	rm -rf .dvc/tmp/vega

# `dvc metrics show`, one block per task (DVC's own table has a column per metric name of every task)
metrics: install
	source $(BIN)/activate && python -m visionpipe.experiments.metrics_view

plots: install $(DVC_PLOTS_TEMPLATE)
	source $(BIN)/activate && dvc config --local plots.html_template offline_plots.html && dvc plots show

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts

# PostgreSQL (this machine's server binaries; cluster, 0600 password, logs under data/server/) and `mlflow server
# --serve-artifacts` on it, loopback only, in the background; a second start reuses the data. The last two lines
# printed are what clients export (README, "For a team").
tracking-server: install
	@$(BIN)/visionpipe tracking-server start

tracking-server-stop: install
	@$(BIN)/visionpipe tracking-server stop

repro: install
	source $(BIN)/activate && dvc repro

clean-data:
	rm -rf data/0*/*/ mlflow.db mlartifacts mlruns
