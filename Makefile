# Sous developer commands. `make run` runs the platform, `make test` passes the tests.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.DEFAULT_GOAL := help
.PHONY: help install run test test-unit chaos check fmt services tools bench bench-quick bench-drain up down dev

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: ## Install uv if missing, then every workspace member and the dev tools
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --all-packages

run: install tools ## Run the API, both workers, the scheduler and Flower in the foreground
	@$(UV) run --frozen python scripts/devstack.py

services: ## Start RabbitMQ, Redis and PostgreSQL if they are down (as root)
	@bash scripts/ensure_services.sh

tools: ## Install ffmpeg/ffprobe if missing (as root, with apt-get)
	@bash scripts/ensure_tools.sh

# Test files run on TEST_WORKERS processes (pytest-xdist), a whole file per process so a
# module's shared installation starts once; most tests wait on real processes, not the CPU.
TEST_WORKERS ?= 3

test: install services tools ## Run the whole suite against the real services
	@$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist loadfile

test-unit: install tools ## Run only the tests that need no services (ffmpeg is a tool, not a service)
	@$(UV) run --frozen pytest -m "not integration" libs services tests/test_architecture.py

chaos: install tools ## Fault suite (minutes): kill, freeze and restart under load; prints the invariants
	@$(UV) run --frozen python scripts/chaos.py $(CHAOS_ARGS)
	@$(UV) run --frozen pytest -m long_fault tests/chaos

bench: install services tools ## Run the benchmarks (minutes); results in bench/README.md and results.json
	@$(UV) run --frozen python bench/vs_baseline.py
	@$(UV) run --frozen python bench/scale.py
	@$(UV) run --frozen python bench/drain.py --jobs 10000
	@$(UV) run --frozen python bench/isolation.py
	@$(UV) run --frozen python bench/fast_jobs.py --runs 5 --emails 500
	@$(UV) run --frozen python bench/transcodes.py

bench-quick: install services tools ## A one-minute smoke run of the benchmarks
	@$(UV) run --frozen python bench/vs_baseline.py --runs 1 --seconds 3 --jobs 500 --no-save
	@$(UV) run --frozen python bench/scale.py --rows 100000 --requests 30 --no-save
	@$(UV) run --frozen python bench/drain.py --jobs 2000 --no-save
	@$(UV) run --frozen python bench/isolation.py --emails 20 --gets 50 --transcodes 6 --clip-seconds 2 --runs 1 --no-save
	@$(UV) run --frozen python bench/fast_jobs.py --runs 1 --emails 100 --sequential-urls 5 --no-save
	@$(UV) run --frozen python bench/transcodes.py --seconds 10 --burst-seconds 3 --burst 2 --runs 1 --no-save

bench-drain: install services tools ## Queue 100,000 jobs, drain them, report memory (about 8 minutes)
	@$(UV) run --frozen python bench/drain.py --jobs 100000 --plot bench/drain.png

up: ## Run the whole stack in Docker (compose.yaml): API on :8000, Grafana on :3000
	@docker compose up --build --detach

down: ## Stop the compose stack (its volumes are kept; `docker compose down -v` drops them)
	@docker compose down

dev: ## On a local Kubernetes cluster: dependencies (k8s/dev), then skaffold dev
	@kubectl apply -k k8s/dev
	@for workload in statefulset/rabbitmq statefulset/postgresql deployment/redis; do \
		kubectl -n sous rollout status $$workload --timeout=300s || exit 1; \
	done
	@skaffold dev -p dev

check: install ## Format check, lint and type check, as in CI
	@$(UV) run --frozen ruff format --check .
	@$(UV) run --frozen ruff check .
	@$(UV) run --frozen mypy libs/core/src libs/fetch/src libs/client/src services/api/src services/worker-fast/src services/worker-heavy/src services/scheduler/src

fmt: install ## Format the code and apply safe lint fixes
	@$(UV) run --frozen ruff format .
	@$(UV) run --frozen ruff check --fix .
