# nri-zeropod: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
REPO := $(abspath .)
BUILD := $(REPO)/build
VENV := $(REPO)/.venv
PY := $(VENV)/bin/python

.PHONY: all setup build demo test test-unit test-integration test-e2e typecheck bench clean

all: build

setup:
	hack/setup.sh

include init/init.mk
include bpf/bpf.mk

build: $(BUILD)/zeropod-init $(BUILD)/zeropod-criu $(BUILD)/libzeropod-rlimits.so $(BUILD)/steer.bpf.o

demo: setup
	$(VENV)/bin/nri-zeropod demo

test: setup
	$(VENV)/bin/ruff check nri_zeropod tests bench
	$(PY) -m mypy
	NRI_ZEROPOD_CI=$${NRI_ZEROPOD_CI:-0} $(PY) -m pytest tests/unit tests/integration tests/e2e

test-unit:
	$(PY) -m pytest tests/unit

test-integration:
	$(PY) -m pytest tests/integration

test-e2e:
	$(PY) -m pytest tests/e2e

typecheck:
	$(PY) -m mypy

clean:
	rm -rf $(BUILD)
