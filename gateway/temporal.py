"""The gateway's one Temporal client, connected on first need and then kept."""

import asyncio
from collections.abc import Awaitable, Callable

from temporalio.client import Client
from temporalio.runtime import Runtime

from encryption.keys import require_keys
from starter.connect import connect
from starter.service import TemporalUnavailable
from telemetry.tracing import Tracing

ClientProvider = Callable[[], Awaitable[Client]]


def temporal_client_provider(
    address: str | None = None,
    namespace: str | None = None,
    *,
    runtime: Runtime | None = None,
    tracing: Tracing | None = None,
) -> ClientProvider:
    """A provider that connects with `starter.connect.connect()` (the one client factory),
    on `runtime` (default: the SDK's) and with `tracing`'s interceptor when it is on.

    The payload encryption keys are read now: a gateway without them fails at start, naming the
    setting, instead of answering 503 to every request.

    Raises:
        KeysError: no usable encryption keys are configured.
    """
    keys = require_keys()

    async def provide() -> Client:
        return await connect(address, namespace, keys, runtime=runtime, tracing=tracing)

    return provide


class TemporalConnection:
    """Connects on first need and keeps the client.

    The gateway starts even while Temporal is down (its health check says so); requests then
    retry the connection instead of the process having to be restarted.
    """

    def __init__(self, provider: ClientProvider) -> None:
        self._provider = provider
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        """The client, connecting first when there is none yet.

        Raises:
            TemporalUnavailable: when the connection cannot be made.
        """
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    try:
                        self._client = await self._provider()
                    except RuntimeError as exc:
                        raise TemporalUnavailable(str(exc)) from None
        return self._client
