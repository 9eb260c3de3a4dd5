# The same targets CI runs; each installs what it needs into .venv first.
.PHONY: demo test lint typecheck bench clean

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

lint:
	bash scripts/setup.sh && .venv/bin/python -m ruff check daemon tests bench

typecheck:
	bash scripts/setup.sh && .venv/bin/python -m mypy

bench:
	bash scripts/setup.sh && .venv/bin/python bench/bench_engine.py --quick && .venv/bin/python bench/bench_memory.py --quick

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis
