#!/usr/bin/env bash
# Create .venv (if needed) and install rolloutd with its test tools. Idempotent.
# --python-only: .venv and the compiled engine, no Debian tools (what `make test-unit` needs).
set -euo pipefail
cd "$(dirname "$0")/.."
python_only=""
if [ "${1:-}" = --python-only ]; then python_only=1; fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Exactly the locked releases, each file checked against its hash (scripts/lock.sh makes the
# lock); then rolloutd itself, built with the locked setuptools rather than a fetched one.
# Reinstalled whenever the lock or pyproject.toml changes.
LOCK=requirements/dev.lock
stamp=.venv/.installed-$(cat pyproject.toml "$LOCK" | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --require-hashes -r "$LOCK"
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# apt_install SERVICE PACKAGE...: install Debian packages for the tests' tools, without
# ever leaving their packaged services running (policy-rc.d exiting 101 tells invoke-rc.d
# not to start them; whatever started anyway is stopped).
apt_install() {
    local service=$1
    shift
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: missing $*; install these Debian packages (the tests need them)" >&2
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d made_policy="" aptlog
    aptlog=$(mktemp)
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    local ok=1
    # Refresh the package lists only when the first try fails (unknown or stale lists).
    if ! apt-get install -y -qq --no-install-recommends "$@" >"$aptlog" 2>&1; then
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "$@" >"$aptlog" 2>&1 || ok=""
    fi
    if [ -n "$made_policy" ]; then rm -f "$policy"; fi
    if [ -z "$ok" ]; then
        cat "$aptlog" >&2
        rm -f "$aptlog"
        echo "setup.sh: could not install $*" >&2
        exit 1
    fi
    rm -f "$aptlog"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        service "$service" stop >/dev/null 2>&1 || true
    fi
    local pidfile="/run/$service/$service.pid"
    if [ -f "$pidfile" ]; then
        local pid
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$service" ]; then
            kill "$pid" 2>/dev/null || true
        fi
    fi
}

# The MQTT tests start their own mosquitto on a free loopback port.
if [ -n "$python_only" ]; then
    .venv/bin/python scripts/compile_core.py
    exit 0
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto mosquitto
fi
# The deploy and metrics tests use promtool (Debian's prometheus package: only the tool is
# wanted) and systemd-analyze.
deploy_pkgs=()
command -v promtool >/dev/null 2>&1 || deploy_pkgs+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || deploy_pkgs+=(systemd)
if [ ${#deploy_pkgs[@]} -gt 0 ]; then
    apt_install prometheus "${deploy_pkgs[@]}"
fi
# `amtool check-config` for the compose stack's Alertmanager config (Debian's
# prometheus-alertmanager; only the tool is wanted, its service is kept stopped).
if ! command -v amtool >/dev/null 2>&1; then
    apt_install prometheus-alertmanager prometheus-alertmanager
fi

# The PostgreSQL state and failover tests start a cluster of their own (Debian's server
# binaries, under /usr/lib/postgresql; the packaged cluster is kept stopped).
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    apt_install postgresql postgresql
fi

# The engine's hot modules compiled with mypyc (the same source; interpreted if that fails
# or ROLLOUTD_PURE=1). Rebuilt whenever those sources change.
.venv/bin/python scripts/compile_core.py
