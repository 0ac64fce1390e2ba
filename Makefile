# One set of commands for people and CI (.ci/run calls `make test`).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CDK := node_modules/.bin/cdk
ENV ?=
CDK_ARGS ?=
# CI has no terminal to answer the approval prompt: the PR diff review is the approval there.
APPROVAL ?= $(if $(CI),never,broadening)
REGION ?=

export CDK_DISABLE_CLI_TELEMETRY := true
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PATH := $(CURDIR)/$(BIN):$(PATH)

CDK_ENV_ARG := $(if $(ENV),-c env=$(ENV),)

.PHONY: help install synth test lint typecheck pytest serve diff deploy cost clean secrets bench
.PHONY: checkov checkov-venv bootstrap

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt ml_server/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed node_modules/.installed ## Create .venv and node_modules (pinned)

# checkov has its own venv: its pins conflict with requirements-dev.txt (boto3).
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-checkov.txt
	@touch $@
checkov-venv: $(CHECKOV_VENV)/.installed ## Create .venv-checkov (checkov, pinned; make test uses it)
pytest: $(CHECKOV_VENV)/.installed
checkov: $(CHECKOV_VENV)/.installed ## checkov on cdk.out (acknowledgments: checkov-acks.yaml)
	@test -f cdk.out/manifest.json || $(MAKE) synth
	$(CHECKOV_VENV)/bin/checkov -d cdk.out --framework cloudformation --compact --quiet --skip-download

synth: install ## Synthesize every environment and Humansa-CI (or ENV=name|ci) into cdk.out, offline
	$(CDK) synth -q --no-notices $(CDK_ENV_ARG)
	$(PY) scripts/synth_summary.py cdk.out
	$(PY) scripts/cost.py cdk.out --summary

diff: install ## What a deploy would change (ENV=name): against AWS if credentials work, else main
	$(PY) scripts/make_diff.py $(if $(ENV),--env $(ENV),) $(DIFF_ARGS)

deploy: install ## Deploy one environment (ENV=dev|staging|production) or the account stack (ENV=ci) [CDK_ARGS="-c image_tag=1.2.3"]
	@test -n "$(ENV)" || { echo "make deploy needs ENV=<name> (dev, staging, production, or ci for the account-level Humansa-CI)" >&2; exit 2; }
	$(CDK) deploy --all --no-notices --require-approval $(APPROVAL) -c env=$(ENV) $(CDK_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy .

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest ## ruff, mypy and every test (infra and server)

cost: install ## Estimated monthly cost per environment (ENV=name; REGION=us-east-1 to compare)
	@test -f cdk.out/manifest.json || $(MAKE) synth
	$(PY) scripts/cost.py cdk.out $(if $(ENV),--env $(ENV),) $(if $(REGION),--region $(REGION),)

bootstrap: install ## cdk bootstrap ENV=name|ci with the scoped execution policy + role boundary (bootstrap/)
	PY=$(PY) scripts/bootstrap.sh "$(ENV)"

secrets: ## Put one secret from stdin: make secrets ENV=production NAME=OPENAI_API_KEY
	@scripts/put_secret.sh "$(ENV)" "$(NAME)"

serve: $(VENV)/.installed ## Run the ML server on 127.0.0.1:5001 (SQLite in .humansa/, fake/echo without keys)
	ENVIRONMENT=$${ENVIRONMENT:-development} $(PY) -m ml_server serve --local

bench: $(VENV)/.installed ## Gateway overhead vs a minimal proxy (BENCH_ARGS="--requests 5000"), ~1 min
	$(PY) benchmarks/gateway_overhead.py $(BENCH_ARGS)

clean: ## Remove build outputs (keeps .venv and node_modules)
	rm -rf cdk.out .mypy_cache .ruff_cache .pytest_cache
