# Thin wrappers: the scripts are the source of truth (they also work without make).
.PHONY: run test lint bench bootstrap

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
