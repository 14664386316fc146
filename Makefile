# dtkd: two commands do everything on a fresh machine.
#   make run   set up (venv, pinned install, isolated ZenML store + MLflow stack) and run the pipeline
#   make test  same set-up, then the whole test suite (slow tests included, as CI runs it)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
PIPELINE ?= pipelines.training.training_pipeline
PYTEST_ARGS ?=

# Isolated ZenML/MLflow home inside the checkout; telemetry off everywhere.
export DTKD_HOME ?= $(CURDIR)/.dtkd
export ZENML_CONFIG_PATH ?= $(DTKD_HOME)/zenml
export ZENML_ANALYTICS_OPT_IN := false
export ZENML_ENABLE_RICH_TRACEBACK := false
export ZENML_LOGGING_COLORS_DISABLED := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# Python writes the bytecode of what it imports, once, into the venv and the checkout (both
# git-ignored): where PYTHONDONTWRITEBYTECODE is set (this fleet), a venv without .pyc files
# recompiles every module on every import (imports twice as slow; `make test` took 16 min instead
# of 13). Cheaper than compiling all 239 packages at install (45 s; docs/runs.md).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup install stack remote sysdeps check data prepare pretrain run retrain rollback team-up team-down schedule test test-fast bench clean

install: $(VENV)/.installed

# One resolve with the lock file: a second pip install once broke zenml's opentelemetry pin.
# uv installs the same pinned set as pip (the same resolve with constraints.txt; `pip freeze` equal)
# in a tenth of the time from warm caches (12 s vs 130 s; docs/runs.md); INSTALLER=pip, or any uv
# failure (an index only pip's configuration names), installs with pip.
INSTALLER ?= uv
UV_VERSION := 0.13.9
PIP_INSTALL := $(PY) -m pip install -q -c constraints.txt -e ".[mlops,test]"
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" wheel
	@if [ "$(INSTALLER)" = uv ] && $(PY) -m pip install -q "uv==$(UV_VERSION)"; then \
	  echo "uv pip install -c constraints.txt -e .[mlops,test]"; \
	  $(VENV)/bin/uv pip install -q --python $(PY) $${PIP_FIND_LINKS:+--find-links $$PIP_FIND_LINKS} -c constraints.txt -e ".[mlops,test]" \
	  || { echo "uv failed: installing with pip" >&2; $(PIP_INSTALL); }; \
	else echo "$(PIP_INSTALL)"; $(PIP_INSTALL); fi
	@touch $@

stack: install
	$(PY) -m pipelines.stack

setup: stack

# The DVC data stages of the run config (generate -> manifest -> quality -> store), derived from its
# data section into datasets/<name>/ (dtkd_ops.dvc_stages): pull what the remote has, reproduce what
# changed, push everything the lock names. Only that config's stages run.
data: install remote
	@set -euo pipefail; export PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	stages=$$($(PY) -m dtkd_ops.dvc_stages $(CONFIG)); \
	dvc pull -q --allow-missing $$stages || true; \
	dvc repro $$stages; \
	dvc push -q $$stages

# The DVC remote lives outside the checkout (`make clean` never deletes it): DTKD_DVC_REMOTE, a local
# folder by default; a team points it at S3/GCS/SSH (docs/mlops.md, "Data versioning"). Written to
# .dvc/config.local, which git ignores; an existing default remote is left alone.
DTKD_DVC_REMOTE ?= $(HOME)/.cache/dtkd/dvc-remote
remote: install
	@$(VENV)/bin/dvc remote default >/dev/null 2>&1 || \
	  $(VENV)/bin/dvc remote add --local -d dtkd $(DTKD_DVC_REMOTE)

# Everything a pipeline needs, its independent parts side by side: the DVC data stages beside the
# ZenML stack and the config check (each mostly one core; on 2 cores 114 s -> 67 s, docs/runs.md).
# A failed check fails the target once the data stages are done (resumable; nothing is trained).
prepare: install
	@$(MAKE) --no-print-directory data & data=$$!; \
	$(MAKE) --no-print-directory setup check; ok=$$?; \
	wait $$data && exit $$ok

# Pretrain the backbones the run config's `pretraining:` section names (reused from the MLflow
# registry when the same pretraining is registered already), then run the pipeline. `run` runs
# both in one process (pipelines.run: each as `zenml pipeline run SOURCE -c CONFIG` would; one
# start-up of torch, ZenML and MLflow instead of two).
PRETRAINING := pipelines.pretraining.pretraining_pipeline
pretrain: prepare
	$(VENV)/bin/zenml pipeline run $(PRETRAINING) -c $(CONFIG)

run: prepare
	$(PY) -m pipelines.run -c $(CONFIG) $(PRETRAINING) $(PIPELINE)

# The run config, before anything runs: unknown top-level keys (ZenML ignores them), every dtkd
# key, the model options and the gate config, each error naming the file and the key.
check: install
	$(PY) -m pipelines.check_config $(CONFIG)

# Retrain only if the DVC data version changed since the champion (pipelines/retraining.py).
retrain: pretrain
	$(VENV)/bin/zenml pipeline run pipelines.retraining.retraining_pipeline -c $(CONFIG)

# Champion back to the version it replaced (MLflow, the pointer of record), then ZenML's model
# stages mirrored from the aliases (pipelines.model_stages). MODEL=dtkd-student by default.
MODEL ?= dtkd-student
rollback: setup
	$(PY) -m pipelines.model_stages rollback --model $(MODEL)

# Needs an orchestrator that can schedule (Kubernetes); on the local stack it says why it cannot.
schedule: setup
	$(PY) -m pipelines.schedule -c $(CONFIG)

# Debian packages the tests need: chromium (the Data Docs in MLflow are opened in a real headless
# browser) and postgresql (the team stack). Installed when missing and we are root (CI,
# containers); otherwise says what to install.
SYSDEPS_MISSING = $(shell command -v chromium >/dev/null || command -v chromium-browser >/dev/null || echo chromium) \
                  $(shell ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || echo postgresql)
sysdeps:
	@missing="$(strip $(SYSDEPS_MISSING))"; [ -z "$$missing" ] || \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else echo "needs Debian packages: sudo apt-get install $$missing" >&2; exit 1; fi

# The team stack on this machine: PostgreSQL, an MLflow tracking server on it (basic auth, proxied
# artifacts), a ZenML server, and the ZenML stack `dtkd_team` using them (pipelines/team_stack.py).
# Pipelines then run against the servers; `eval "$$(.venv/bin/python -m dtkd_ops.services env)"`
# gives the CLI (dtkd gate/promote) the same registry. team-down stops all and the client returns
# to its local store. docker-compose.team.yaml: the same services as containers, for a laptop.
team-up: install sysdeps
	$(PY) -m pipelines.team_stack up

team-down: install
	$(PY) -m pipelines.team_stack down

# Two pytest workers (the machine's two cores), each test file kept in one worker (its module
# fixtures: a pipeline home, the team stack) and one torch thread per worker (no oversubscription).
PYTEST_PARALLEL ?= -n 2 --dist loadfile
test: setup sysdeps
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" $(PYTEST_PARALLEL) $(PYTEST_ARGS)

bench: install
	$(PY) bench/throughput.py --quick

clean:
	rm -rf $(DTKD_HOME) .zen data/default data/tiny
