# kiln's two set-up commands: `make demo` and `make test`. Both install the native dependencies first (once).
#   KILN_DEPS=DIR   where libtorch and ONNX Runtime are installed (default .deps/ in the repo)
#   CUDA=1          use libtorch with CUDA (downloads the CUDA 13 libraries from PyPI, ~3 GB)
SHELL := /bin/bash
KILN_DEPS ?= $(CURDIR)/.deps
CUDA ?= 0
export KILN_DEPS CUDA
export LIBTORCH := $(shell KILN_DEPS=$(KILN_DEPS) CUDA=$(CUDA) scripts/deps.sh --print-libtorch)
export ORT_DYLIB_PATH ?= $(KILN_DEPS)/onnxruntime/libonnxruntime.so
# Test binaries of the library crates have no rpath of their own.
export LD_LIBRARY_PATH := $(LIBTORCH)/lib$(if $(LD_LIBRARY_PATH),:$(LD_LIBRARY_PATH))
CARGO ?= cargo
KILN := $(or $(CARGO_TARGET_DIR),target)/release/kiln

.PHONY: deps build demo test lint unit bench clean-runs

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --locked

demo: build
	$(KILN) demo

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Tests that cannot start PostgreSQL or build a Python environment skip; the last line says which groups did.
SKIP_LOG := $(abspath $(or $(CARGO_TARGET_DIR),target))/kiln-skipped.tsv
unit: deps
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)
	@KILN_SKIP_LOG=$(SKIP_LOG) $(CARGO) test --workspace --locked; status=$$?; scripts/skip_summary.sh $(SKIP_LOG); exit $$status

test: lint unit

bench: deps
	$(CARGO) bench --locked --bench data_pipeline --bench infer --bench nms --bench detector --bench ctc --bench recognizer --bench ddp_reducer
	$(CARGO) bench --locked -p kiln-tune --bench tpe --bench study_storage

clean-runs:
	rm -rf runs
