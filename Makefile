# Thin wrappers: the scripts are the source of truth (they also work without make).
.PHONY: run test lint bench bootstrap reliability

run:
	scripts/serve

test:
	scripts/test

lint:
	scripts/lint

bench:
	scripts/bootstrap
	.venv/bin/python -m bench

bootstrap:
	scripts/bootstrap

# Issue 5: the long load, kill -9, fault and flood runs; writes docs/RELIABILITY.md (RELIABILITY_ARGS=--quick in CI).
reliability:
	scripts/reliability $(RELIABILITY_ARGS)
