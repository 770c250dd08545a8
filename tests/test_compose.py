"""docker-compose.yml, docker-compose.dev.yml, Dockerfile and .env.example against the contract.

No Docker engine is needed: the files are parsed and compared with the code they must agree
with (search attributes, ports, the settings the code reads), and with the rules of the
production stack: the stand-in only in the dev profile, ports on loopback only, secrets from
files only, hardened containers, images pinned by digest. Where the docker client has its compose
plugin, `docker compose config` checks the files as Compose itself reads them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from worker import GRACEFUL_SHUTDOWN
from workflows.messages import TASK_QUEUE, CallSearchAttributes
from workflows.retries import TAPRAISE_TRY

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("worker", "gateway", "codec", "sandbox")
ONE_SHOTS = ("temporal-schema", "temporal-setup")
# Temporal's own environment configuration (read by the SDK for every client we make).
TEMPORAL_CLIENT_VARIABLES = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"}
SA_TYPES = {"KEYWORD": "Keyword", "INT": "Int", "DATETIME": "Datetime"}
# Names of variables that hold a secret, or name a file holding one.
SECRET_NAME = re.compile(r"PASSWORD|PWD|TOKENS?(_FILE)?$|PRIVATE_KEY(_FILE)?$|API_KEY|SECRET|KEYS")
# Variables whose names look like secrets but are switches.
NOT_SECRETS = {"TEMPORAL_CODEC_PASS_ACCESS_TOKEN"}
# The capabilities PostgreSQL's entrypoint needs to own its data directory and drop to its user.
POSTGRES_CAPABILITIES = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}
# A read of the environment, by a literal name or by a module constant holding the name.
ENVIRON_READ = re.compile(r"(?:environ(?:\.get)?[(\[]|getenv\()(?:\"([A-Z][A-Z0-9_]+)\"|(\w+))")
NAME_CONSTANT = re.compile(r"^(\w+)(?::[^=\n]+)?=\s*\"([A-Z][A-Z0-9_]+)\"", flags=re.MULTILINE)
DIGEST = re.compile(r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")


class ComposeLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type hints
    """YAML as Compose reads it, with the merge tags of override files (`!reset`, `!override`)."""


def _merge_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", _merge_tag)
ComposeLoader.add_constructor("!override", _merge_tag)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def dev() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load("docker-compose.dev.yml")["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "- NAME=value" form
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port; "" is every address."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # the long form
            found.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
            continue
        parts = str(entry).split(":")
        address = parts[0] if len(parts) == 3 else ""
        found.append((address, int(parts[-2]), int(parts[-1])))
    return found


def host_ports(service: dict[str, Any]) -> dict[int, int]:
    """Host port → container port."""
    return {host: container for _, host, container in published(service)}


def seconds(duration: str) -> float:
    """A Compose duration ("1m30s", "45s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def env_example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def production_modules() -> list[str]:
    """The top-level packages and modules `pip install .` carries, as pyproject.toml lists them."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = [pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]]
    return [*packages, *setuptools["py-modules"]]


def settings_classes() -> list[type[BaseSettings]]:
    """Every pydantic-settings class of the production code (imported to be found)."""
    tops = production_modules()
    for top in tops:
        module = importlib.import_module(top)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{top}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found: list[type[BaseSettings]] = []
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        for sub in pending.pop().__subclasses__():
            pending.append(sub)
            if sub.__module__.split(".")[0] in tops:
                found.append(sub)
    return found


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables one settings class reads (pydantic-settings' naming rule)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in settings.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            continue  # a nested settings class reads its own variables
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{name}".upper())
        else:
            choices = getattr(alias, "choices", [alias])
            names |= {c for c in choices if isinstance(c, str) and c.isupper()}
    return names


def environ_reads(source: str) -> set[str]:
    """The variables a module reads with os.environ or os.getenv, by name or by constant."""
    constants = dict(NAME_CONSTANT.findall(source))
    names = set()
    for literal, constant in ENVIRON_READ.findall(source):
        if literal or constant in constants:
            names.add(literal or constants[constant])
    return names


def settings_names() -> set[str]:
    """Every environment variable the project's settings classes and entry points read."""
    names: set[str] = set()
    for settings in settings_classes():
        names |= env_names(settings)
    # Read with os.environ or os.getenv anywhere in the production code.
    for top in production_modules():
        for path in [ROOT / f"{top}.py", *(ROOT / top).glob("**/*.py")]:
            if path.is_file():
                names |= environ_reads(path.read_text())
    return names | TEMPORAL_CLIENT_VARIABLES


def test_ports_are_the_contracts(services: dict[str, dict[str, Any]]) -> None:
    assert host_ports(services["temporal"]) == {7233: 7233}
    assert host_ports(services["temporal-ui"]) == {8233: 8080}
    assert host_ports(services["sandbox"]) == {8081: 8081}
    assert host_ports(services["gateway"]) == {8080: 8080}
    assert host_ports(services["codec"]) == {8082: 8082}
    assert host_ports(services["prometheus"]) == {9090: 9090}
    assert host_ports(services["grafana"]) == {3000: 3000}
    for name, port in (("sandbox", "8081"), ("gateway", "8080"), ("codec", "8082")):
        command = services[name]["command"]
        assert command[command.index("--port") + 1] == port, name


def test_every_port_is_published_on_loopback_only(
    services: dict[str, dict[str, Any]], dev: dict[str, dict[str, Any]]
) -> None:
    # Nothing answers other machines directly: a TLS proxy with sign-in is the way in (README).
    for name, service in [*services.items(), *dev.items()]:
        for address, host, _ in published(service):
            where = address or "every address"
            assert address == "127.0.0.1", f"{name} publishes {host} on {where}"


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
    services: dict[str, dict[str, Any]], dev: dict[str, dict[str, Any]]
) -> None:
    known = settings_names()
    for name in APP_SERVICES:
        unknown = set(environment(services[name])) - known
        unknown |= set(environment(dev.get(name, {}))) - known
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


def test_dependencies_wait_for_health_or_completion(
    services: dict[str, dict[str, Any]], dev: dict[str, dict[str, Any]]
) -> None:
    conditions = {"service_healthy", "service_completed_successfully"}
    for name, service in [*services.items(), *dev.items()]:
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


def test_worker_refuses_to_start_without_a_tapraise_url(
    services: dict[str, dict[str, Any]],
) -> None:
    # Compose itself stops, naming the setting, before any container starts.
    url = environment(services["worker"])["TAPRAISE_BASE_URL"]
    assert url.startswith("${TAPRAISE_BASE_URL:?") and url.endswith("}")
    assert "TAPRAISE_BASE_URL" in url.removeprefix("${TAPRAISE_BASE_URL:?")
    # ... and never reaches the stand-in by itself: no sandbox address, account or network.
    worker = services["worker"]
    assert "network_mode" not in worker
    assert "sandbox" not in worker.get("depends_on", {})
    assert not any("sandbox" in str(volume) for volume in worker.get("volumes", []))
    assert not {"TAPRAISE_SANDBOX_DATA_DIR", "TAPRAISE_ALLOW_HTTP"} & set(environment(worker))


def test_the_stand_in_runs_only_in_the_dev_profile(
    services: dict[str, dict[str, Any]], dev: dict[str, dict[str, Any]]
) -> None:
    assert services["sandbox"]["profiles"] == ["dev"]
    others = {name for name, service in services.items() if service.get("profiles")}
    assert others == {"sandbox"}
    for name, service in services.items():
        assert "sandbox" not in service.get("depends_on", {}), name
    # The dev file points the worker at the stand-in: it waits for it, speaks plain HTTP to it
    # only there, and takes the stand-in's demo account instead of a mounted TapRaise key.
    worker = dev["worker"]
    assert set(dev) == {"worker"}
    assert worker["depends_on"]["sandbox"]["condition"] == "service_healthy"
    assert environment(worker) == {"TAPRAISE_ALLOW_HTTP": "true"}
    assert worker["secrets"] == ["encryption-keys"]
    assert "sandbox-data:/data/sandbox:ro" in worker["volumes"]
    script = worker["entrypoint"][-1]
    assert "/data/sandbox/service-account.json" in script
    assert "os.execvp(sys.argv[1], sys.argv[1:])" in script  # then the service's own command
    # The command it documents reaches the stand-in by its service name and port.
    text = (ROOT / "docker-compose.dev.yml").read_text()
    port = host_ports(services["sandbox"])[8081]
    assert f"TAPRAISE_BASE_URL=http://sandbox:{port}" in text
    assert "--profile dev" in text and "-f docker-compose.dev.yml" in text


def test_no_secret_is_an_environment_value(
    services: dict[str, dict[str, Any]], dev: dict[str, dict[str, Any]]
) -> None:
    for name, service in [*services.items(), *dev.items()]:
        for variable, value in environment(service).items():
            if variable in NOT_SECRETS or not SECRET_NAME.search(variable):
                continue
            assert variable.endswith("_FILE"), f"{name}: the secret {variable} is a value"
            mounted = value.removeprefix("/run/secrets/")
            assert value.startswith("/run/secrets/"), f"{name}: {variable}={value}"
            assert mounted in service.get("secrets", []), f"{name}: {mounted} is not mounted"
    text = (ROOT / "docker-compose.yml").read_text()
    interpolated = re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text)
    assert not [v for v in interpolated if SECRET_NAME.search(v) and v not in NOT_SECRETS]


def test_secrets_are_files_mounted_where_the_settings_point(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = compose["secrets"]
    for name, source in declared.items():
        assert set(source) == {"file"}, f"secret {name} must come from a file"
        assert source["file"].startswith("./secrets/"), name
    for name, service in services.items():
        assert set(service.get("secrets", [])) <= set(declared), name
    expected = {
        "worker": {
            "TAPRAISE_PRIVATE_KEY_FILE": "tapraise-private-key",
            "ENCRYPTION_KEYS_FILE": "encryption-keys",
        },
        "gateway": {
            "GATEWAY_TOKENS_FILE": "gateway-tokens",
            "ENCRYPTION_KEYS_FILE": "encryption-keys",
        },
        "codec": {
            "CODEC_SERVER_TOKENS_FILE": "codec-tokens",
            "ENCRYPTION_KEYS_FILE": "encryption-keys",
        },
        "postgresql": {"POSTGRES_PASSWORD_FILE": "postgres-password"},
        "grafana": {
            "GF_SECURITY_ADMIN_PASSWORD__FILE": "grafana-admin-password",
            "GF_SECURITY_SECRET_KEY__FILE": "grafana-secret-key",
        },
    }
    for name, files in expected.items():
        env = environment(services[name])
        for variable, secret in files.items():
            assert env[variable] == f"/run/secrets/{secret}", f"{name}: {variable}"
            assert secret in services[name]["secrets"], f"{name}: {secret}"
    # Temporal's server and schema tool take the password only from a variable: each sets it
    # from the mounted file as it starts.
    for name in ("temporal", "temporal-schema"):
        script = "\n".join([*services[name]["entrypoint"], *services[name].get("command", [])])
        assert "$$(cat /run/secrets/postgres-password)" in script, name
        assert services[name]["secrets"] == ["postgres-password"], name
    # The files themselves stay out of the repository and out of the image.
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()


def test_every_container_is_read_only_unprivileged_and_capability_free(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert "/tmp" in service.get("tmpfs", []), name
        added = set(service.get("cap_add", []))
        assert added == (POSTGRES_CAPABILITIES if name == "postgresql" else set()), name
    for name in APP_SERVICES:
        assert services[name]["user"] == "tapraise", name


def test_the_worker_has_time_to_finish_its_work_when_stopped(
    services: dict[str, dict[str, Any]],
) -> None:
    # SIGTERM reaches the worker through init; it then finishes the TapRaise try in flight.
    worker = services["worker"]
    assert worker["init"] is True
    grace = seconds(worker["stop_grace_period"])
    assert grace > GRACEFUL_SHUTDOWN.total_seconds() + 10 > TAPRAISE_TRY.total_seconds(), grace
    assert seconds(services["postgresql"]["stop_grace_period"]) >= grace


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        if "build" in service:  # built here: a version tag of the project's own
            repository, _, tag = image.rpartition(":")
            assert repository.startswith("tapraise-calls") and re.match(r"\d+\.\d+\.\d+$", tag)
        else:
            assert DIGEST.match(image), f"{name}: {image} is not pinned by digest"
    assert "temporalio/auto-setup" not in (ROOT / "docker-compose.yml").read_text()
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["temporal-schema"]["image"].startswith("temporalio/admin-tools:")
    assert services["temporal-setup"]["image"] == services["temporal-schema"]["image"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert re.search(r"^pin-images:", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    bases = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    outside = [base for base in bases if ":" in base]  # not one of the Dockerfile's own stages
    assert outside and all(DIGEST.match(base) for base in outside), outside


def test_app_services_run_the_projects_image_and_entry_points(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    # The worker, the gateway and the codec server run the production image; the sandbox its own.
    assert services["worker"]["image"] == services["gateway"]["image"]
    assert services["codec"]["image"] == services["worker"]["image"]
    assert services["sandbox"]["image"] != services["worker"]["image"]
    targets = {name: services[name]["build"]["target"] for name in APP_SERVICES}
    assert targets == {
        "worker": "production",
        "gateway": "production",
        "codec": "production",
        "sandbox": "sandbox",
    }
    assert all(services[name]["build"]["context"] == "." for name in APP_SERVICES)
    assert services["worker"]["command"] == ["python", "-m", "worker"]
    assert services["sandbox"]["command"][:3] == ["python", "-m", "sandbox"]
    assert services["gateway"]["command"][:4] == ["python", "-m", "starter", "serve"]
    assert services["codec"]["command"][0] == "tapraise-calls-codec"
    for name in ("sandbox", "gateway", "codec"):
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0"
    assert environment(services["gateway"]).get("CALLS_TASK_QUEUE", "").endswith(f"{TASK_QUEUE}}}")
    volumes = set(compose["volumes"])
    assert {"postgres-data", "sandbox-data"} <= volumes
    assert "sandbox-data:/data/sandbox" in services["sandbox"]["volumes"]


def test_the_web_ui_reaches_the_codec_server_as_the_browser_does(
    services: dict[str, dict[str, Any]],
) -> None:
    ui = environment(services["temporal-ui"])
    endpoint = ui["TEMPORAL_CODEC_ENDPOINT"]
    assert endpoint == "${TEMPORAL_CODEC_ENDPOINT:-http://localhost:8082}"
    assert ui["TEMPORAL_CODEC_PASS_ACCESS_TOKEN"] == "${TEMPORAL_CODEC_PASS_ACCESS_TOKEN:-false}"
    # The codec server lets exactly the UI's page call it.
    origins = environment(services["codec"])["CODEC_CORS_ORIGINS"]
    assert origins == "${CODEC_CORS_ORIGINS:-http://localhost:8233}"


def prometheus_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → `source` or `source:ro`, from the short form of `volumes`."""
    found = {}
    for entry in service.get("volumes", []):
        source, target, *mode = str(entry).split(":")
        found[target] = ":".join([source, *mode])
    return found


def test_metrics_ports_stay_on_the_compose_network_where_prometheus_scrapes_them(
    services: dict[str, dict[str, Any]],
) -> None:
    # Each process serves /metrics on every address of its container, on the port Prometheus
    # scrapes; none of those ports is published on the host.
    listening = {
        "worker": environment(services["worker"])["WORKER_METRICS_ADDRESS"],
        "gateway": environment(services["gateway"])["GATEWAY_METRICS_ADDRESS"],
        "temporal": environment(services["temporal"])["PROMETHEUS_ENDPOINT"],
    }
    assert listening == {
        "worker": "0.0.0.0:9464",
        "gateway": "0.0.0.0:9465",
        "temporal": "0.0.0.0:8000",
    }
    ports = {name: int(address.rpartition(":")[2]) for name, address in listening.items()}
    for name, service in services.items():
        for _, host, container in published(service):
            assert not {host, container} & set(ports.values()), f"{name} publishes a metrics port"
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    # Every replica of a scaled service (`--scale worker=3`): Docker's DNS answers the service's
    # name with each container's address.
    for name in ("worker", "gateway"):
        (discovery,) = jobs[name]["dns_sd_configs"]
        assert discovery["names"] == [name] and name in services
        assert (discovery["type"], discovery["port"]) == ("A", ports[name])
    (static,) = jobs["temporal"]["static_configs"]
    assert static["targets"] == [f"temporal:{ports['temporal']}"]


def test_prometheus_and_grafana_read_their_configuration_from_ops_read_only(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert mounts(prometheus)["/etc/prometheus"] == "./ops/prometheus:ro"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "--storage.tsdb.path=/prometheus" in prometheus["command"]
    assert mounts(prometheus)["/prometheus"] == "prometheus-data"
    for rule_file in prometheus_config()["rule_files"]:
        assert (ROOT / "ops/prometheus" / rule_file).is_file(), rule_file
    assert mounts(grafana)["/etc/grafana/provisioning"] == "./ops/grafana/provisioning:ro"
    assert mounts(grafana)["/var/lib/grafana"] == "grafana-data"
    assert {"prometheus-data", "grafana-data"} <= set(compose["volumes"])
    # The dashboards provider reads the folder the dashboards are mounted at.
    provider_file = ROOT / "ops/grafana/provisioning/dashboards/tapraise-calls.yml"
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    dashboards = provider["options"]["path"]
    assert mounts(grafana)[dashboards] == "./ops/grafana/dashboards:ro"
    assert list((ROOT / "ops/grafana/dashboards").glob("*.json"))
    # Its data source is this stack's Prometheus, which it waits for.
    source_file = ROOT / "ops/grafana/provisioning/datasources/prometheus.yml"
    (source,) = yaml.safe_load(source_file.read_text())["datasources"]
    assert source["url"] == f"http://prometheus:{host_ports(prometheus)[9090]}"
    assert source["jsonData"]["timeInterval"] == prometheus_config()["global"]["scrape_interval"]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def test_grafana_lets_in_only_users_who_sign_in(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["grafana"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    # Nothing fetched from the internet as it starts.
    assert env["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"


def test_compose_secrets_writes_every_random_secret_the_stack_mounts(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "secrets"
    make = ["make", "--no-print-directory", "-C", str(ROOT), "compose-secrets", f"SECRETS={folder}"]
    first = subprocess.run(make, capture_output=True, text=True, timeout=60, check=True)
    files = {Path(source["file"]).name for source in compose["secrets"].values()}
    # The TapRaise key is TapRaise's to give: it is named as missing, never made up.
    assert "tapraise-private-key.pem" in first.stdout
    written = {path.name: path.read_text() for path in folder.iterdir()}
    assert set(written) == files - {"tapraise-private-key.pem"}
    assert all(value.strip() for value in written.values())
    assert len(set(written.values())) == len(written), "two secrets have the same value"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o644}
    # A second run keeps every value.
    subprocess.run(make, capture_output=True, text=True, timeout=60, check=True)
    assert {path.name: path.read_text() for path in folder.iterdir()} == written


def dockerfile_stages() -> dict[str, str]:
    """Each stage of the Dockerfile by name, with its text."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    return {part.split()[2]: part for part in parts}


def test_dockerfile_installs_the_locked_dependencies_then_the_wheel_as_a_non_root_user() -> None:
    stages = dockerfile_stages()
    # production is the last stage, so the default target.
    assert list(stages) == ["base", "wheel", "sandbox", "production"]
    assert re.match(r"python:3\.11-slim\b", stages["base"])
    assert "COPY requirements/production.txt" in stages["base"]
    assert "pip install --require-hashes -r requirements/production.txt" in stages["base"]
    assert "pip wheel --no-deps --no-build-isolation" in stages["wheel"]
    assert "pip install --no-deps /dist/*.whl" in stages["production"]
    for name in ("wheel", "sandbox", "production"):
        assert stages[name].startswith("base AS ")
    for name in ("sandbox", "production"):
        user = re.findall(r"^USER (\S+)", stages[name], flags=re.MULTILINE)
        assert user and user[-1] not in {"root", "0"}
    assert re.search(r'^CMD \["python", "-m", "worker"\]', stages["production"], flags=re.M)


def test_production_image_carries_neither_the_sandbox_nor_benchmarks_nor_tests() -> None:
    stages = dockerfile_stages()
    copied = {
        name: set(re.findall(r"^COPY (\S+)", text, flags=re.MULTILINE))
        for name, text in stages.items()
    }
    assert copied["base"] == {"requirements/production.txt"}
    # The wheel stage sees the sources; the wheel holds pyproject.toml's packages only (checked
    # in tests/test_packaging.py), and the production stage receives nothing else.
    assert copied["production"] == set()
    assert "--mount=type=bind,from=wheel,source=/dist" in stages["production"]
    assert copied["sandbox"] == {"sandbox"}
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".data", ".env", ".git", "secrets", "tests", "bench"} <= set(ignored)


def compose_plugin_missing() -> str | None:
    """Why `docker compose` cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return "the docker client has no compose plugin"
    return None


@pytest.fixture
def compose_project(tmp_path: Path) -> Path:
    """The compose files with stand-in secret files, where no `.env` of the clone interferes."""
    for name in ("docker-compose.yml", "docker-compose.dev.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "secrets").mkdir()
    for source in load("docker-compose.yml")["secrets"].values():
        (tmp_path / source["file"]).write_text("not a secret\n")
    return tmp_path


def docker_compose(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = dict(os.environ)
    for name in ("TAPRAISE_BASE_URL", "COMPOSE_FILE", "COMPOSE_PROFILES"):
        clean.pop(name, None)
    return subprocess.run(
        ["docker", "compose", *args],
        cwd=project,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_reads_the_files_and_refuses_a_stack_without_a_tapraise_url(
    compose_project: Path,
) -> None:
    reason = compose_plugin_missing()
    if reason:
        pytest.skip(f"docker compose config cannot run: {reason}")
    refused = docker_compose(compose_project, "config", "--quiet")
    assert refused.returncode != 0
    assert "TAPRAISE_BASE_URL" in refused.stderr
    url = "https://api.tapraise.example"
    production = docker_compose(compose_project, "config", TAPRAISE_BASE_URL=url)
    assert production.returncode == 0, production.stderr
    assert "sandbox" not in load_rendered(production.stdout)["services"]
    with_dev = docker_compose(
        compose_project,
        *("-f", "docker-compose.yml", "-f", "docker-compose.dev.yml", "--profile", "dev"),
        "config",
        TAPRAISE_BASE_URL="http://sandbox:8081",
    )
    assert with_dev.returncode == 0, with_dev.stderr
    worker = load_rendered(with_dev.stdout)["services"]["worker"]
    assert [secret["source"] for secret in worker["secrets"]] == ["encryption-keys"]
    assert "sandbox" in worker["depends_on"]


def load_rendered(text: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(text)
    return data
