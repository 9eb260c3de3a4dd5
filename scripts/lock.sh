#!/usr/bin/env bash
# Regenerate the hashed dependency locks from pyproject.toml (run after changing a dependency
# or to take newer releases; commit the result with the change).
#
#   requirements/dev.lock      runtime + test/lint/build tools: scripts/setup.sh, CI, the
#                              image's builder stage
#   requirements/runtime.lock  what the daemon imports: the image's runtime venv; the same
#                              versions and hashes as dev.lock (resolved under it)
#
# Both are pip requirement files with a hash for every artefact of every pinned release and
# no index URL, so `pip install --require-hashes -r requirements/dev.lock` installs exactly
# these files from whichever index pip is configured with. The resolver is uv (installed
# into .venv for locking only; installs use pip). Extra arguments go to both compiles,
# e.g. `--upgrade-package aiohttp`.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if [ ! -x .venv/bin/python ]; then
    bash scripts/setup.sh
fi
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    .venv/bin/python -m pip install --quiet "uv==$UV_VERSION"
fi
compile() {
    local out=$1
    shift
    .venv/bin/uv pip compile pyproject.toml "$@" \
        --python-version 3.11 --universal \
        --generate-hashes --no-emit-index-url --no-emit-find-links \
        --quiet --output-file "$out"
}
compile requirements/dev.lock --extra dev "$@"
compile requirements/runtime.lock --constraint requirements/dev.lock "$@"
# The locks must name no host: only pins and hashes.
if grep -nE '://|^\s*-(-index-url|-extra-index-url|-find-links|i|f)\b' requirements/*.lock; then
    echo "lock.sh: a lock names an index or URL" >&2
    exit 1
fi
