#!/usr/bin/env bash
# Install rolloutd into .venv (if needed) and replay the bundled incident scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rolloutd demo "$@"
