#!/usr/bin/env bash
# Install what the tests need, then run lint, type checks and the test suite twice: all of it
# on the compiled engine (the build the image ships), then the tests that import or drive
# the engine's compiled modules on the same source interpreted (ROLLOUTD_PURE=1 loads the
# .py files beside the build, which stays in place). Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check daemon tests bench
.venv/bin/python -m ruff format --check daemon tests bench
.venv/bin/python -m mypy
# The arrows between the package's layers ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports --no-cache
build=$(.venv/bin/python scripts/compile_core.py --check || true)
if [ "$build" != current ]; then
    if [ "${CI:-}" = true ]; then
        echo "test.sh: the engine is not compiled ($build): CI tests the compiled build" >&2
        exit 1
    fi
    echo "test.sh: no compiled engine ($build): both runs are interpreted" >&2
fi
status=0
echo "== the whole suite, compiled engine"
.venv/bin/python -m pytest "$@" || status=$?
echo "== the engine's tests, interpreted (ROLLOUTD_PURE=1)"
# Exit 5 (no test collected) is fine here: the arguments chose no engine test.
ROLLOUTD_PURE=1 .venv/bin/python -m pytest --engine-only "$@" || {
    code=$?
    if [ "$code" != 5 ]; then status=$code; fi
}
exit "$status"
