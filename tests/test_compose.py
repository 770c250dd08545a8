"""docker-compose.yml, Dockerfile and .env.example against the public contract.

No Docker engine is needed: the files are parsed and compared with the code they must agree
with (search attributes, ports, the settings the code reads).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from tapraise.settings import TapRaiseSettings
from worker import WorkerSettings
from workflows.messages import TASK_QUEUE, CallSearchAttributes

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("worker", "sandbox", "gateway")
ONE_SHOTS = ("temporal-schema", "temporal-setup")
# Temporal's own environment configuration (read by the SDK for every client we make).
TEMPORAL_CLIENT_VARIABLES = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"}
SA_TYPES = {"KEYWORD": "Keyword", "INT": "Int", "DATETIME": "Datetime"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "- NAME=value" form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> dict[int, int]:
    """Host port → container port."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(host)] = int(container)
    return ports


def env_example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def settings_names() -> set[str]:
    """Every environment variable the project's settings classes and entry points read."""
    names = {"TAPRAISE_BASE_URL"}
    names |= {
        f"TAPRAISE_{name.upper()}"
        for name, field in TapRaiseSettings.model_fields.items()
        if field.validation_alias is None
    }
    for field in [*GatewaySettings.model_fields.values(), *WorkerSettings.model_fields.values()]:
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias])
        names |= {c for c in choices if isinstance(c, str) and c.isupper()}
    # Read with os.environ in the entry points (worker.py and friends).
    for path in [ROOT / "worker.py", *ROOT.glob("starter/*.py"), *ROOT.glob("workflows/*.py")]:
        names |= set(re.findall(r"environ(?:\.get)?[(\[]\"([A-Z][A-Z0-9_]+)\"", path.read_text()))
    return names | TEMPORAL_CLIENT_VARIABLES


def test_ports_are_the_contracts(services: dict[str, dict[str, Any]]) -> None:
    assert published(services["temporal"]) == {7233: 7233}
    assert published(services["temporal-ui"]) == {8233: 8080}
    assert published(services["sandbox"]) == {8081: 8081}
    assert published(services["gateway"]) == {8080: 8080}
    assert "--port" in services["sandbox"]["command"]
    assert (
        services["sandbox"]["command"][services["sandbox"]["command"].index("--port") + 1] == "8081"
    )
    assert (
        services["gateway"]["command"][services["gateway"]["command"].index("--port") + 1] == "8080"
    )


def test_search_attributes_are_registered_with_the_contracts_names_and_types(
    services: dict[str, dict[str, Any]],
) -> None:
    setup = services["temporal-setup"]
    declared = dict(pair.split("=") for pair in environment(setup)["SEARCH_ATTRIBUTES"].split())
    expected = {key.name: SA_TYPES[key.indexed_value_type.name] for key in CallSearchAttributes.ALL}
    assert declared == expected
    script = "\n".join(setup["command"])
    assert "temporal operator search-attribute create" in script
    assert "temporal operator namespace create" in script


def test_app_services_set_only_variables_the_code_reads(
    services: dict[str, dict[str, Any]],
) -> None:
    known = settings_names()
    for name in APP_SERVICES:
        unknown = set(environment(services[name])) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_env_example_lists_every_setting_the_code_reads() -> None:
    listed = env_example_names()
    missing = settings_names() - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
    compose_vars = set(
        re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]+)[:}]", (ROOT / "docker-compose.yml").read_text())
    )
    assert compose_vars <= listed, f".env.example lacks {sorted(compose_vars - listed)}"


def test_env_example_holds_no_secret_values() -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]+)=(.*)$", line)
        if match and re.search(r"PASSWORD|TOKENS|PRIVATE_KEY$|API_KEY", match[1]):
            assert match[2] == "", f"{match[1]} has a value in .env.example"


def test_long_running_services_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert str(service.get("restart", "")).startswith("on-failure"), name
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    conditions = {"service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: bare depends_on list"
        for dependency, rule in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule.get("condition") in conditions, f"{name} -> {dependency}: {rule}"
            wanted = (
                "service_completed_successfully" if dependency in ONE_SHOTS else "service_healthy"
            )
            assert rule["condition"] == wanted, f"{name} -> {dependency}"
    # The chain of Temporal's samples: database -> schema -> server -> namespace -> the rest.
    assert "postgresql" in services["temporal-schema"]["depends_on"]
    assert "temporal-schema" in services["temporal"]["depends_on"]
    assert "temporal" in services["temporal-setup"]["depends_on"]
    for name in ("temporal-ui", "worker", "gateway"):
        assert "temporal-setup" in services[name]["depends_on"]


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
    assert "temporalio/auto-setup" not in (ROOT / "docker-compose.yml").read_text()
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["temporal-schema"]["image"].startswith("temporalio/admin-tools:")


def test_required_secrets_fail_fast_when_unset(services: dict[str, dict[str, Any]]) -> None:
    assert environment(services["postgresql"])["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert environment(services["gateway"])["GATEWAY_TOKENS"].startswith("${GATEWAY_TOKENS:?")
    assert environment(services["temporal"])["POSTGRES_PWD"].startswith("${POSTGRES_PASSWORD:?")


def test_app_services_run_the_projects_image_and_entry_points(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    # The worker and the gateway run the production image; the sandbox its own stage on top.
    assert services["worker"]["image"] == services["gateway"]["image"]
    assert services["sandbox"]["image"] != services["worker"]["image"]
    targets = {name: services[name]["build"]["target"] for name in APP_SERVICES}
    assert targets == {"worker": "production", "gateway": "production", "sandbox": "sandbox"}
    assert all(services[name]["build"]["context"] == "." for name in APP_SERVICES)
    assert services["worker"]["command"] == ["python", "-m", "worker"]
    assert services["sandbox"]["command"][:3] == ["python", "-m", "sandbox"]
    assert services["gateway"]["command"][:4] == ["python", "-m", "starter", "serve"]
    for name in ("sandbox", "gateway"):
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0"
    assert environment(services["gateway"]).get("CALLS_TASK_QUEUE", "").endswith(f"{TASK_QUEUE}}}")
    volumes = set(compose["volumes"])
    assert {"postgres-data", "sandbox-data"} <= volumes
    assert "sandbox-data:/data/sandbox" in services["sandbox"]["volumes"]
    assert environment(services["worker"])["TAPRAISE_SANDBOX_DATA_DIR"] == "/data/sandbox"


def dockerfile_stages() -> dict[str, str]:
    """Each stage of the Dockerfile by name, with its text."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    return {part.split()[2]: part for part in parts}


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["base", "sandbox", "production"]  # production is the default target
    assert re.match(r"python:3\.11-slim\b", stages["base"])
    assert "pip install ." in stages["base"]
    for name in ("sandbox", "production"):
        assert stages[name].startswith("base AS ")
        user = re.findall(r"^USER (\S+)", stages[name], flags=re.MULTILINE)
        assert user and user[-1] not in {"root", "0"}
    assert re.search(r'^CMD \["python", "-m", "worker"\]', stages["production"], flags=re.M)


def test_production_image_carries_neither_the_sandbox_nor_benchmarks_nor_tests() -> None:
    copied = re.findall(r"^COPY (\S+)", dockerfile_stages()["base"], flags=re.MULTILINE)
    assert not {"sandbox", "bench", "tests", "."} & set(copied)
    assert "COPY sandbox" in dockerfile_stages()["sandbox"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".data", ".env", ".git"} <= set(ignored)
