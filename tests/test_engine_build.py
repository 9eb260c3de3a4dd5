"""Which engine runs: the compiled build where it is current, the source with ROLLOUTD_PURE=1
(even beside a build), and the daemon says which on its startup line."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rolloutd.core
from rolloutd.engine_build import COMPILED_MODULES, engine_kind
from test_deploy import dockerfile, dockerignored

ROOT = Path(__file__).resolve().parent.parent
COMPILE = runpy.run_path(str(ROOT / "scripts" / "compile_core.py"))
PURE = os.environ.get("ROLLOUTD_PURE") == "1"


def expected_kind() -> str:
    return "compiled" if COMPILE["state"]() == "current" and not PURE else "interpreted"


def test_the_lists_of_compiled_modules_agree() -> None:
    assert COMPILE["MODULES"] == COMPILED_MODULES


def test_this_run_uses_the_engine_its_mode_names() -> None:
    assert engine_kind() == expected_kind()  # imports every one of them
    files = [sys.modules[f"rolloutd.core.{name}"].__file__ or "" for name in COMPILED_MODULES]
    if expected_kind() == "interpreted":
        assert all(f.endswith(".py") for f in files), files
    else:
        assert not any(f.endswith(".py") for f in files), files


def probe(pure: bool) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_PURE"}
    if pure:
        env["ROLLOUTD_PURE"] = "1"
    code = (
        "import json, rolloutd.core.engine as e, rolloutd.engine_build as b;"
        "print(json.dumps({'kind': b.engine_kind(), 'file': e.__file__}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


needs_build = pytest.mark.skipif(
    COMPILE["state"]() != "current", reason="no compiled engine here (no C compiler?)"
)


@needs_build
def test_pure_loads_the_source_beside_a_current_build() -> None:
    assert list(Path(rolloutd.core.__path__[0]).glob("engine.*.so"))  # the build is there
    assert probe(pure=False)["kind"] == "compiled"
    interpreted = probe(pure=True)
    assert interpreted["kind"] == "interpreted"
    assert str(interpreted["file"]).endswith("core/engine.py")
    assert COMPILE["state"]() == "current"  # and it is left in place


CONFIG = """
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 10, hold: 600s}, {percent: 100}]
state: {path: "STATE"}
http: {listen: "127.0.0.1:0"}
"""


def startup_line(tmp_path: Path, pure: bool) -> dict[str, object]:
    """Start `rolloutd run` (no brokers needed), read its first service line, stop it."""
    config = tmp_path / "rolloutd.yaml"
    config.write_text(CONFIG.replace("STATE", str(tmp_path / f"state-{pure}.db")))
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_PURE"}
    if pure:
        env["ROLLOUTD_PURE"] = "1"
    cmd = [sys.executable, "-m", "rolloutd", "run", "--config", str(config)]
    with subprocess.Popen(
        [*cmd, "--log-format", "json"], env=env, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            end = time.monotonic() + 30
            while time.monotonic() < end:
                line = proc.stderr.readline()
                assert line, "the daemon exited without a startup line"
                fields: dict[str, object] = json.loads(line)
                if fields.get("logger") == "rolloutd.service":
                    return fields
            raise AssertionError("no startup line within 30 s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def test_the_daemon_names_its_engine_at_start(tmp_path: Path) -> None:
    line = startup_line(tmp_path, pure=PURE)
    assert line["engine"] == expected_kind()
    assert line["version"] == rolloutd.__version__
    assert "starting" in str(line["event"])


@needs_build
def test_the_daemon_says_interpreted_when_told_to_be(tmp_path: Path) -> None:
    assert startup_line(tmp_path, pure=False)["engine"] == "compiled"
    assert startup_line(tmp_path, pure=True)["engine"] == "interpreted"


# -- the image ------------------------------------------------------------------------------


def test_the_image_compiles_the_engine_with_the_locked_tools_and_checks_it() -> None:
    builder = " ".join(i.args for i in dockerfile() if i.stage == 0 and i.name == "RUN")
    assert "gcc" in builder
    order = [
        "/opt/build/bin/pip install --require-hashes -r requirements/dev.lock",
        "/opt/build/bin/python scripts/compile_core.py",
        'compile_core.py --check)" = current',
        "pip wheel",
        'cp daemon/rolloutd/core/*.so "$site/rolloutd/core/"',
        'cp daemon/*__mypyc*.so "$site/"',
        "engine_kind() == 'compiled'",
    ]
    at = [builder.index(part) for part in order]
    assert at == sorted(at)
    # A build left in a checkout never reaches the image: it compiles its own.
    for built in ("daemon/rolloutd/core/engine.cpython-311-x86_64-linux-gnu.so",
                  "daemon/abc__mypyc.cpython-311-x86_64-linux-gnu.so",
                  "daemon/rolloutd/core/.compiled"):  # fmt: skip
        assert dockerignored(built), built
    assert not dockerignored("scripts/compile_core.py")


@needs_build
def test_extensions_copied_beside_an_installed_wheel_run_compiled(tmp_path: Path) -> None:
    """The image's layout: the wheel's source, the extensions copied in as its RUN does."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), "."]
    subprocess.run(build, cwd=ROOT, check=True, capture_output=True)
    (wheel,) = wheels.glob("rolloutd-*.whl")
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True)
    assert not list(site.rglob("*.so"))  # the wheel itself is the source only
    core = ROOT / "daemon" / "rolloutd" / "core"
    for extension in core.glob("*.so"):
        shutil.copy2(extension, site / "rolloutd" / "core")
    for shared in (ROOT / "daemon").glob("*__mypyc*.so"):
        shutil.copy2(shared, site)
    code = "import rolloutd.engine_build as b, rolloutd; print(b.engine_kind(), rolloutd.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_PURE"} | {"PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    kind, package = done.stdout.split()
    assert kind == "compiled"
    assert package.startswith(str(site))
