# The same targets CI runs; each installs what it needs into .venv first.
.PHONY: demo test test-unit test-integration lint typecheck bench clean

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

# The tests that need no broker, system tool or child process (tests/integration.py decides):
# no root, no network, nothing installed beyond .venv.
test-unit:
	bash scripts/setup.sh --python-only && .venv/bin/python -m pytest -m "not integration" -q

# The rest: Tansu, mosquitto, promtool, systemd-analyze, amtool and the daemon as a process,
# all installed by scripts/setup.sh beforehand.
test-integration:
	bash scripts/setup.sh && .venv/bin/python -m pytest -m integration -q

lint:
	bash scripts/setup.sh --python-only && .venv/bin/python -m ruff check daemon tests bench && .venv/bin/python -m ruff format --check daemon tests bench

typecheck:
	bash scripts/setup.sh --python-only && .venv/bin/python -m mypy && .venv/bin/lint-imports --no-cache

bench:
	bash scripts/setup.sh && .venv/bin/python bench/bench_engine.py --quick && .venv/bin/python bench/bench_memory.py --quick

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis
