# pg_redis: `make demo` and `make test` set up everything they need (see README.md).
SHELL := /bin/bash
# PostgreSQL the demo and the bench run against: 15 (Debian's, the default) or 18 (`PG=18 make demo`).
# `make test` runs every PostgreSQL tier against both.
PG ?= 15
export PG

.PHONY: setup demo test lint stop bench chaos

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

test: setup
	@scripts/test.sh

lint: setup
	@scripts/lint.sh

stop:
	@target/release/pg_redis_dev down demo

bench: setup
	@target/release/pg_redis_bench

chaos: setup
	@scripts/chaos.sh
