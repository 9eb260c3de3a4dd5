#!/usr/bin/env bash
# Create .venv (if needed) and install rolloutd with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# The MQTT tests start their own mosquitto on a free loopback port: install Debian's
# binary, but never leave the packaged service running on 1883.
have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}
if ! have_mosquitto; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        # policy-rc.d exiting 101 tells invoke-rc.d not to start the packaged service.
        policy=/usr/sbin/policy-rc.d
        made_policy=
        aptlog=$(mktemp)
        cleanup() {
            rm -f "$aptlog"
            if [ -n "$made_policy" ]; then rm -f "$policy"; fi
        }
        trap cleanup EXIT
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod +x "$policy"
            made_policy=1
        fi
        install_mosquitto() {
            apt-get install -y -qq --no-install-recommends mosquitto >"$aptlog" 2>&1
        }
        # Refresh the package lists only when apt does not know the package (or they are
        # stale and the install fails).
        if ! apt-cache show mosquitto >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
        fi
        if ! install_mosquitto; then
            apt-get update -qq >/dev/null
            if ! install_mosquitto; then
                cat "$aptlog" >&2
                echo "setup.sh: could not install mosquitto" >&2
                exit 1
            fi
        fi
        cleanup
        trap - EXIT
        # In case the service started anyway: stop and disable it (no systemd is fine).
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now mosquitto >/dev/null 2>&1 || true
        else
            service mosquitto stop >/dev/null 2>&1 || true
        fi
        pidfile=/run/mosquitto/mosquitto.pid
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile" 2>/dev/null || true)
            if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ]; then
                kill "$pid" 2>/dev/null || true
            fi
        fi
    else
        echo "setup.sh: mosquitto not found; install Debian's mosquitto package" \
            "(the MQTT tests need it)" >&2
    fi
fi

# The deploy tests check alert rules and dashboard queries with promtool (Debian's
# prometheus package: only the tool is wanted, its service must not start) and the unit
# file with systemd-analyze.
deploy_pkgs=()
command -v promtool >/dev/null 2>&1 || deploy_pkgs+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || deploy_pkgs+=(systemd)
if [ ${#deploy_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        policy=/usr/sbin/policy-rc.d
        made_policy=
        aptlog=$(mktemp)
        deploy_cleanup() {
            rm -f "$aptlog"
            if [ -n "$made_policy" ]; then rm -f "$policy"; fi
        }
        trap deploy_cleanup EXIT
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod +x "$policy"
            made_policy=1
        fi
        install_deploy_tools() {
            apt-get install -y -qq --no-install-recommends "${deploy_pkgs[@]}" >"$aptlog" 2>&1
        }
        if ! install_deploy_tools; then
            apt-get update -qq >/dev/null
            if ! install_deploy_tools; then
                cat "$aptlog" >&2
                echo "setup.sh: could not install ${deploy_pkgs[*]}" >&2
                exit 1
            fi
        fi
        deploy_cleanup
        trap - EXIT
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        else
            service prometheus stop >/dev/null 2>&1 || true
        fi
    else
        echo "setup.sh: ${deploy_pkgs[*]} missing; install these Debian packages" \
            "(promtool and systemd-analyze: the deploy tests need them)" >&2
    fi
fi
