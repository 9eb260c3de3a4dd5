"""The import contracts in pyproject.toml: the tree keeps them, and a back-import breaks them.

Each case copies the package's source and pyproject.toml into a temporary directory, adds
one import that runs back up a layer, and runs `lint-imports` there (PYTHONPATH puts the
copy ahead of the installed package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, package_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_dir)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_its_arrows() -> None:
    result = _lint(ROOT, ROOT / "daemon")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "target"),
    [
        # the two arrows that ran back before the status view and the core's MigrationWiring
        ("adapters/http.py", "from rolloutd.app.pipeline import Pipeline", "rolloutd.app"),
        ("config/__init__.py", "from rolloutd.app.cdc import MigrationWiring", "rolloutd.app"),
        ("core/spec.py", "from rolloutd.config import Config", "rolloutd.config"),
        ("config/schema.py", "from rolloutd.adapters import store", "rolloutd.adapters"),
        ("app/pipeline.py", "from rolloutd.tools import cli", "rolloutd.tools"),
        ("core/engine.py", "from rolloutd import engine_build", "rolloutd.engine_build"),
        ("bucketing.py", "from rolloutd.tools import demo", "rolloutd.tools"),
        ("core/cdc/rows.py", "from rolloutd.adapters.cdc import debezium", "rolloutd.adapters"),
        ("tools/cli.py", "import rolloutd.__main__", "rolloutd.__main__"),
    ],
)
def test_a_back_import_breaks_the_contract(
    tmp_path: Path, module: str, line: str, target: str
) -> None:
    package = _copy(tmp_path)
    with (package / module).open("a") as source:
        source.write(f"\n{line}  # noqa\n")
    result = _lint(tmp_path, tmp_path / "daemon")
    assert result.returncode == 1, result.stdout + result.stderr
    importer = "rolloutd." + module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert importer in result.stdout
    assert target in result.stdout


def test_a_module_outside_every_layer_breaks_the_contract(tmp_path: Path) -> None:
    package = _copy(tmp_path)
    (package / "stray.py").write_text('"""Placed in no layer."""\n')
    result = _lint(tmp_path, tmp_path / "daemon")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolloutd.stray" in result.stdout


def _copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    package = tmp_path / "daemon" / "rolloutd"
    shutil.copytree(
        ROOT / "daemon" / "rolloutd",
        package,
        ignore=shutil.ignore_patterns("*.so", "__pycache__", ".compiled"),
    )
    return package
