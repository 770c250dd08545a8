"""The gateway application: settings checked, one Temporal connection, the routes behind the
bearer token (all but `/healthz`)."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import Depends, FastAPI

from gateway.dependencies import GatewayContext, require_token
from gateway.errors import install_error_handlers
from gateway.models import Problem
from gateway.routes import actions, calls, health
from gateway.settings import GatewaySettings
from gateway.temporal import ClientProvider, TemporalConnection, temporal_client_provider
from starter.service import CallsError

logger = logging.getLogger(__name__)

# Refusals every protected route may answer with, for the OpenAPI pages.
_PROBLEMS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No valid bearer token."},
    404: {"model": Problem, "description": "No such call."},
    409: {"model": Problem, "description": "The call refused the action; `detail` says why."},
    502: {"model": Problem, "description": "Temporal failed the request."},
    503: {"model": Problem, "description": "Temporal or a worker did not answer."},
}


def create_app(
    client_provider: ClientProvider | None = None, settings: GatewaySettings | None = None
) -> FastAPI:
    """The gateway application.

    Args:
        client_provider: Makes the Temporal client (default: `connect()` from the environment);
            tests inject their own.
        settings: Tokens and task queue (default: from the environment and `.env`).

    Raises:
        GatewaySettingsError: when no tokens are configured and `GATEWAY_ALLOW_NO_AUTH` is not
            set.
    """
    settings = settings if settings is not None else GatewaySettings()
    settings.check()
    temporal = TemporalConnection(client_provider or temporal_client_provider())
    context = GatewayContext.of(settings, temporal)
    if not context.secrets:
        logger.warning("GATEWAY_ALLOW_NO_AUTH is set: the gateway accepts unauthenticated requests")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await temporal.client()
        except CallsError as exc:
            logger.warning("Temporal is not reachable yet (requests will retry): %s", exc)
        yield

    app = FastAPI(
        title="tapraise-calls gateway",
        summary="Start TapRaise donor calls and report what happened on them.",
        lifespan=lifespan,
        # One schema per model: the answers' serializers only reorder keys.
        separate_input_output_schemas=False,
    )
    app.state.gateway = context
    install_error_handlers(app)
    app.include_router(health.router)
    for router in (calls.router, actions.router):
        app.include_router(router, dependencies=[Depends(require_token)], responses=_PROBLEMS)
    return app
