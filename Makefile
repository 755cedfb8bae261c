# The two commands of the README: `make serve` and `make test`. Both set up first (idempotent).
.PHONY: setup serve test bench

setup:
	bash scripts/setup.sh

serve: setup
	.venv/bin/synthserve serve $(ARGS)

# every benchmark script in turn, each printing its figures; one of them: make bench BENCH=cli_throughput
bench: setup
	@for script in $(if $(BENCH),bench/$(BENCH).py,$$(grep -l '^if __name__' bench/*.py)); do \
	  echo "== $$script"; .venv/bin/python $$script $(ARGS) || exit 1; done

# type-check first (mypy, [tool.mypy] in pyproject.toml), then the test suite
test: setup
	.venv/bin/python -m mypy
	.venv/bin/python -m pytest -q $(ARGS)
