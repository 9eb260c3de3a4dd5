#!/usr/bin/env bash
# Install rolloutd into .venv (if needed), then the live demo: an embedded broker, the
# daemon and simulated traffic; the canary walks its steps and is rolled back.
# `bash scripts/demo.sh --replay` replays the bundled incident instead (no processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rolloutd demo --config config/demo.yaml "$@"
