"""The one place that makes Temporal clients: worker, starter, gateway and tests use it.

It sets the pydantic data converter (so camelCase JSON from the plain `temporal` CLI decodes into
our message models) with every payload encrypted (`encryption/`: the keys come from
`ENCRYPTION_KEYS_FILE` or `ENCRYPTION_KEYS`), and reads the connection from Temporal's own
environment configuration (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, TLS
settings, or a profile in `temporal.toml`), with `localhost:7233` and the `default` namespace
when nothing is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from encryption.codec import encrypted_data_converter
from encryption.keys import KeyRing, KeysError, require_keys
from telemetry.tracing import Tracing
from workflows.messages import CallSearchAttributes

DEFAULT_ADDRESS = "localhost:7233"


def load_env_file() -> None:
    """Read `.env` in the working directory into the environment; real variables win.

    Entry points call this first, so that every setting (Temporal's own included) can live there.
    """
    from dotenv import load_dotenv

    load_dotenv(Path.cwd() / ".env", override=False)


def connect_config(address: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Connection keywords from the environment, overridden by explicit arguments."""
    config: dict[str, Any] = dict(ClientConfig.load_client_connect_config())
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    return config


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    keys: KeyRing | None = None,
    *,
    runtime: Runtime | None = None,
    tracing: Tracing | None = None,
) -> Client:
    """A Temporal client with the project's data converter, encrypting every payload.

    Args:
        address: The server (default: Temporal's environment configuration, else localhost).
        namespace: The namespace (default: likewise, else `default`).
        keys: The payload encryption keys (default: from the environment, see `encryption.keys`).
        runtime: The Temporal runtime (the worker's serves its metrics; default: the SDK's).
        tracing: When on, the SDK's tracing interceptor: spans for starts, signals and updates
            sent, and, on a worker using this client, for workflows and activities run.

    Raises:
        RuntimeError: with what to do, when no encryption key is configured or the server cannot
            be reached.
    """
    try:
        keys = keys or require_keys()
    except KeysError as exc:
        raise RuntimeError(str(exc)) from None
    config = connect_config(address, namespace)
    if runtime is not None:
        config["runtime"] = runtime
    if tracing is not None and tracing.enabled:
        config["interceptors"] = [*config.get("interceptors", ()), *tracing.interceptors()]
    try:
        return await Client.connect(data_converter=encrypted_data_converter(keys), **config)
    except RuntimeError as exc:
        raise RuntimeError(
            f"cannot reach Temporal at {config['target_host']}: {exc}. Start it (`make run` starts "
            "the embedded dev server) or set TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE."
        ) from exc


def search_attribute_flags() -> list[str]:
    """`--search-attribute Name=Type` arguments that register the contract's attributes."""
    names = {"KEYWORD": "Keyword", "INT": "Int", "DATETIME": "Datetime"}
    return [
        arg
        for key in CallSearchAttributes.ALL
        for arg in ("--search-attribute", f"{key.name}={names[key.indexed_value_type.name]}")
    ]


async def missing_search_attributes(client: Client) -> list[str]:
    """The contract's search attributes that the namespace lacks (or holds with another type)."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    registered = dict(response.custom_attributes)
    return [
        f"{key.name} ({key.indexed_value_type.name.title()})"
        for key in CallSearchAttributes.ALL
        # The SDK's enum shares the API's numbering.
        if registered.get(key.name) != int(key.indexed_value_type)
    ]
