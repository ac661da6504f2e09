# gpufleet: see README.md. Every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
TRITON_CPU_IMAGE ?= gpufleet/tritonserver-cpu:2.51
PYTEST_ARGS ?=

DIST ?= dist

.PHONY: install dev wheels dist demo test check lint format bench soak triton-cpu-image rig-deps deploy-runner deploy-control-plane control-plane-image clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) uninstall -q -y gpufleet gpufleet-control-plane gpufleet-runner 2>/dev/null || true
	$(PIP) install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: ## a virtual environment with every part from this checkout, for users (no test tools: `make dev`)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) uninstall -q -y gpufleet gpufleet-control-plane gpufleet-runner 2>/dev/null || true
	$(PIP) install -q -e '.[all]'

wheels: ## the three distributions into $(DIST)/: gpufleet (SDK + CLI), gpufleet-control-plane, gpufleet-runner
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(DIST)/gpufleet-*.whl $(DIST)/gpufleet_control_plane-*.whl $(DIST)/gpufleet_runner-*.whl
	$(PIP) wheel -q --no-deps --wheel-dir $(DIST) distributions/gpufleet distributions/control-plane distributions/runner
	@ls -1 $(DIST)/*.whl

dist: wheels

dev: $(STAMP) ## every extra and the test tools (what `make test` and `make check` use)

rig-deps: ## Debian packages for the real-component rig (docker.io, mmdebstrap)
	bash scripts/install-rig-deps.sh

.PHONY: perf-analyzer
perf-analyzer: ## Triton's perf_analyzer (2.51) in its own venv: .cache/perf-analyzer/perf_analyzer
	bash scripts/install-perf-analyzer.sh

triton-cpu-image: rig-deps ## build gpufleet/tritonserver-cpu:2.51 offline (skips when present)
	bash scripts/build-triton-cpu-image.sh

demo: dev ## embedded control plane + runner with real Triton when possible; runs add_sub jobs (KEEP=1: leave it running)
	KEEP=$(KEEP) bash scripts/demo.sh

test: dev rig-deps ## everything: unit, contract, API, e2e on real Docker + Triton
	bash scripts/run-tests.sh $(PYTEST_ARGS)

check: dev ## ruff + ruff format --check + mypy --strict (a CI gate, run by .ci/run)
	$(VENV)/bin/ruff check control_plane runner sdk tests bench iac scripts examples distributions
	$(VENV)/bin/ruff format --check control_plane runner sdk tests bench iac scripts examples distributions
	$(VENV)/bin/mypy

format: dev
	$(VENV)/bin/ruff check --fix control_plane runner sdk tests bench iac scripts examples distributions
	$(VENV)/bin/ruff format control_plane runner sdk tests bench iac scripts examples distributions

bench: dev ## benchmarks: printed tables, not tests
	$(PY) bench/bench_queue.py
	$(PY) bench/bench_embedded.py
	$(PY) bench/bench_jobs_batch.py
	$(PY) bench/bench_grpc_transports.py
	$(PY) bench/bench_model_sync.py
	$(PY) bench/bench_hops.py
	$(PY) bench/bench_runner.py
	$(PY) bench/bench_perf_analyzer.py
	$(PY) bench/bench_capacity.py
	$(PY) bench/bench_cold_start.py

soak: install ## 10,000 jobs per store under runner/control-plane kills and a store pause; a table
	$(PY) bench/soak.py $(SOAK_ARGS)

control-plane-image: ## the control-plane container image (IMAGE=…, BASE_IMAGE=…; Dockerfile.control-plane)
	bash scripts/build-control-plane-image.sh

deploy-control-plane: dev ## STACK=name [REGION=…] deploy iac/ with CloudFormation
	$(PY) scripts/deploy_control_plane.py --stack $(STACK) $(if $(REGION),--region $(REGION))

deploy-runner: ## on a GPU host: CONTROL_PLANE_URL=… JOIN_TOKEN=… build and start the runner container
	bash scripts/deploy-runner.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
