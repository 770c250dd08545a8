"""The gateway application: settings checked, one Temporal connection, the routes behind the
gate (`gateway.gate`: body sizes, bearer tokens and their scopes, rate and concurrency limits,
and, without tokens, this machine's own requests only), and in front of all, every request
counted, timed and traced (`gateway.telemetry`)."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import Depends, FastAPI
from starlette.routing import Route

from gateway.dependencies import GatewayContext, bearer
from gateway.errors import install_error_handlers
from gateway.gate import Doors, Gate
from gateway.limits import ConcurrencyLimiter, RateLimiter
from gateway.models import Problem
from gateway.routes import actions, calls, health
from gateway.settings import GatewaySettings
from gateway.telemetry import GatewayMetrics, RequestTelemetry
from gateway.temporal import ClientProvider, TemporalConnection, temporal_client_provider
from gateway.tokens import Tokens
from starter.service import CallsError
from telemetry.tracing import Tracing

logger = logging.getLogger(__name__)

# Refusals every protected route may answer with, for the OpenAPI pages.
_PROBLEMS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": Problem, "description": "No valid bearer token."},
    403: {"model": Problem, "description": "The token lacks the route's scope."},
    404: {"model": Problem, "description": "No such call."},
    409: {"model": Problem, "description": "The call refused the action; `detail` says why."},
    413: {"model": Problem, "description": "The body is larger than the route takes."},
    415: {"model": Problem, "description": "The body is not `application/json`."},
    429: {
        "model": Problem,
        "description": "Over the token's rate or requests in flight; see `Retry-After`.",
    },
    502: {"model": Problem, "description": "Temporal failed the request."},
    503: {"model": Problem, "description": "Temporal or a worker did not answer."},
}

_PROTECTED: Final = (calls.router, actions.router)
_ROUTERS: Final = (health.router, *_PROTECTED)


def create_app(
    client_provider: ClientProvider | None = None,
    settings: GatewaySettings | None = None,
    *,
    metrics: GatewayMetrics | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """The gateway application.

    Args:
        client_provider: Makes the Temporal client (default: `connect()` from the environment);
            tests inject their own.
        settings: Tokens, limits and task queue (default: from the environment and `.env`).
        metrics: Where requests are counted (default: a registry of the application's own);
            `python -m starter serve` serves it on its own listener.
        tracing: When on, a server span per request (the Temporal client's tracing is the
            client provider's).

    Raises:
        GatewaySettingsError: when the tokens are malformed or cannot be read, when none are
            configured and `GATEWAY_ALLOW_NO_AUTH` is not set, or when it is and the bind
            address is not loopback.
        KeysError: no payload encryption keys (with the default client provider).
    """
    settings = settings if settings is not None else GatewaySettings()
    grants = settings.check()
    temporal = TemporalConnection(client_provider or temporal_client_provider())
    context = GatewayContext(settings, temporal, grants)
    if not grants:
        logger.warning(
            "GATEWAY_ALLOW_NO_AUTH is set: the gateway answers this machine's requests without "
            "a token"
        )

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
    for router in _PROTECTED:
        app.include_router(router, dependencies=[Depends(bearer)], responses=_PROBLEMS)
    docs = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    routes = [route for router in _ROUTERS for route in router.routes]
    doors = Doors(routes, [path for path in docs if path])
    app.add_middleware(
        Gate,
        doors=doors,
        tokens=Tokens(grants),
        rate=RateLimiter(settings.rate_limit, settings.burst),
        concurrency=ConcurrencyLimiter(settings.max_concurrent),
    )
    # Added last, so outermost: the gate's refusals are counted and traced too. The routes are
    # named from the routers' own (the application holds each router as one route) and the
    # OpenAPI pages.
    pages = [route for route in app.router.routes if isinstance(route, Route)]
    app.add_middleware(
        RequestTelemetry,
        routes=[*pages, *routes],
        metrics=metrics or GatewayMetrics(),
        tracer=tracing.tracer if tracing is not None and tracing.enabled else None,
    )
    return app
