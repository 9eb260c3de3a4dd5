#!/usr/bin/env bash
# Install what the tests need, then run lint, type checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check daemon tests bench
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
