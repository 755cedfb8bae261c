# The two commands of the README: `make serve` and `make test`. Both set up first (idempotent).
.PHONY: setup serve test bench

setup:
	bash scripts/setup.sh

serve: setup
	.venv/bin/synthserve serve $(ARGS)

test: setup
	.venv/bin/python -m pytest -q $(ARGS)
