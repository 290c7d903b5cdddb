# One-command set-up and checks. `make test` on a fresh clone creates .venv and installs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make run` needs only the serving install (the base package); `make setup` is the developer set
RUN_STAMP := $(VENV)/.installed-run
# torch: scripts/install_torch.sh picks the CUDA build with an NVIDIA GPU, the CPU build without; extra pip
# arguments here override its choice (e.g. --index-url https://download.pytorch.org/whl/cu128)
TORCH_PIP_ARGS ?=
INSTALL_TORCH = TORCH_PIP_ARGS='$(TORCH_PIP_ARGS)' scripts/install_torch.sh $(BIN)/python
# `make bench` / `make bench-serve`: extra bench.table arguments (e.g. --json, --compare-ref REV, --rounds 3)
BENCH_ARGS ?=
BENCH_SERVE_ARGS ?=
BENCH_OBSERVABILITY_ARGS ?=
# infra-check runs checkov from its own venv: its pins clash with the main venv's
INFRA_VENV := .venv-infra
CHECKOV_VERSION ?= 3.3.30
# the environment of the cloud targets (envs/$(ENV).yaml); the scripts read it with the venv's Python
ENV ?= dev
SCRIPT_ENV := PYTHON=$(CURDIR)/$(BIN)/python

.PHONY: setup test test-fast test-stress soak lint format bench bench-serve demo-model run serve clean observe synth infra-check bench-observability \
	bootstrap preflight verify apply gpu-up gpu-down gpu-status

setup: $(STAMP)

# Reinstall only when the project's dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(INSTALL_TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The serving install: torch and the base package, no extras (a developer set, when fresh, already has it).
$(RUN_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $@; exit 0; fi; \
	set -e; test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install --quiet --upgrade pip; \
	$(INSTALL_TORCH); \
	$(BIN)/python -m pip install --quiet -e .; \
	touch $@

# pytest exits 5 when it collected no tests: that must fail too, with a message that says so.
test: setup $(INFRA_VENV)/bin/checkov
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# The whole suite STRESS_RUNS times while STRESS_HOGS busy loops at nice 0 (one per core) compete for the CPU;
# fails if any run fails. The hogs end with the recipe however it ends (each watches the recipe's shell).
STRESS_RUNS ?= 2
STRESS_HOGS ?= $(shell nproc 2>/dev/null || echo 2)
STRESS_PYTEST ?= $(BIN)/python -m pytest -q
test-stress: setup $(INFRA_VENV)/bin/checkov
	@recipe=$$$$; hogs=""; \
	for i in $$(seq $(STRESS_HOGS)); do \
		nice -n 0 sh -c 'while kill -0 '$$recipe' 2>/dev/null; do i=0; while [ $$i -lt 50000 ]; do i=$$((i + 1)); done; done' & \
		hogs="$$hogs $$!"; \
	done; \
	trap 'kill $$hogs 2>/dev/null; wait' EXIT; trap 'exit 130' INT TERM; \
	export NANOCHAT_STRESS_HOGS="$$hogs"; failed=0; \
	for run in $$(seq $(STRESS_RUNS)); do \
		echo "make test-stress: run $$run of $(STRESS_RUNS), CPU hogs:$$hogs"; \
		$(STRESS_PYTEST) || failed=$$((failed + 1)); \
	done; \
	echo "make test-stress: $$failed of $(STRESS_RUNS) runs failed"; [ $$failed -eq 0 ]

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The speed table (bench/table.py): engine decode at batch 1 and 64 and cold start to /ready on the depth-6
# shape, this tree beside HEAD~1 measured in the same run, and the goals; minutes (8 on a busy 2-core machine).
bench: setup
	$(BIN)/python -m bench.table --rows engine,cold-start $(BENCH_ARGS)

# Serve the bundled demo model (models/demo) on 127.0.0.1:8000; settings from NANOCHAT_* env vars / .env.
run: $(RUN_STAMP)
	$(BIN)/python -m app

# Production-style: gunicorn with uvicorn workers (app/gunicorn.conf.py).
serve: $(RUN_STAMP)
	$(BIN)/gunicorn -c app/gunicorn.conf.py

# A bounded soak, not in CI: gunicorn (app/gunicorn.conf.py, 2 workers) on 127.0.0.1 under mixed traffic at
# concurrency 8 for SOAK_MINUTES; prints JSON (requests sent/answered, statuses, worker RSS and fds).
SOAK_MINUTES ?= 5
SOAK_ARGS ?=
soak: setup
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# The same table's service rows: a server of this tree and one of HEAD~1 under 16 and 64 streams (tok/s,
# TTFT p95, RSS); a few minutes. A running server alone: python -m bench.serve --url URL (docs/serving.md).
bench-serve: setup
	$(BIN)/python -m bench.table --rows service $(BENCH_SERVE_ARGS)

# Retrain the bundled demo model from scratch (about 10 minutes on 2 CPU cores); see scripts/demo_model.sh.
demo-model: setup
	scripts/demo_model.sh

clean:
	rm -rf $(VENV) $(INFRA_VENV) .pytest_cache .ruff_cache .hypothesis build cdktf.out node_modules *.egg-info

# The app and a local Prometheus (Debian's package) with alerts/*.rules.yaml loaded; Ctrl-C stops both.
observe: setup
	scripts/observe.sh

# CDKTF: synthesize one Terraform stack per env file (envs/*.yaml) into cdktf.out/stacks/<env>/.
synth: setup
	$(BIN)/python -m infra.main

# checkov over the synthesized stacks (skips with reasons: infra/checkov-skips.yaml) + our own policies.
infra-check: synth $(INFRA_VENV)/bin/checkov
	$(BIN)/python -m infra.checks --checkov $(INFRA_VENV)/bin/checkov

$(INFRA_VENV)/bin/checkov:
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)

# Service tokens/s with metrics, logs and traces on vs off (two demo servers, one run; ~1 min); see
# docs/observability.md "Overhead". Arguments via BENCH_OBSERVABILITY_ARGS (e.g. --json --repeats 20).
bench-observability: setup
	$(BIN)/python -m bench.observability $(BENCH_OBSERVABILITY_ARGS)

# ---- the cloud (docs/infra.md): ENV=dev|prod ----------------------------------------------------------------
# Read-only: can this account bootstrap ENV (permissions per phase, billing, GPU quota)?
preflight: setup
	$(SCRIPT_ENV) scripts/preflight.sh --env $(ENV)

# From an empty project to a released, monitored service, in phases; re-running skips what is done.
bootstrap: setup
	$(SCRIPT_ENV) scripts/bootstrap.sh --env $(ENV)

# An infra change that goes live: cdktf deploy, then the gated promotion of the service's new revision.
apply: setup
	npx cdktf deploy $(ENV)
	$(SCRIPT_ENV) scripts/deploy.sh --env $(ENV) --promote-latest

# After a deploy: chat, metrics, Grafana, email channels, budget and kill switch; one line each.
verify: setup
	$(SCRIPT_ENV) scripts/verify.sh --env $(ENV)

# The GPU group by hand (free credits): start, stop, look.
gpu-up: setup
	$(SCRIPT_ENV) scripts/gpu.sh up $(ENV)

gpu-down: setup
	$(SCRIPT_ENV) scripts/gpu.sh down $(ENV)

gpu-status: setup
	$(SCRIPT_ENV) scripts/gpu.sh status $(ENV)

# Retrieval (nanochat/rag): the default index of README.md and docs/ (seconds; incremental), and the offline
# embedder's retraining (models/rag/embedder, committed; about 2 s).
RAG_INDEX ?= models/rag/docs
.PHONY: rag-index rag-embedder
rag-index: setup
	$(BIN)/python -m nanochat rag index README.md docs --out $(RAG_INDEX)

rag-embedder: setup
	$(BIN)/python -m nanochat rag train-embedder --out models/rag/embedder
