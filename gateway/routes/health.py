"""`/healthz`: whether the gateway runs and Temporal answers (no token needed).

Anyone may ask, so the answer names no address and repeats no error: the reason goes to the
gateway's log.
"""

import logging
from datetime import timedelta
from typing import Final, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.dependencies import Context, door
from gateway.models import Health

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT: Final = timedelta(seconds=3)

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    dependencies=[door(None)],
    response_model=Health,
    responses={503: {"model": Health, "description": "Temporal does not answer."}},
)
async def healthz(context: Context) -> Health | JSONResponse:
    """Whether the gateway runs and Temporal answers (no token needed)."""
    try:
        client = await context.temporal.client()
        healthy = await client.service_client.check_health(timeout=HEALTH_TIMEOUT)
    except Exception as exc:  # any failure here is what the health check reports
        logger.warning("health check: Temporal is unreachable: %s", exc)
        return _degraded("unreachable")
    if not healthy:
        logger.warning("health check: Temporal answers but is not serving")
        return _degraded("not serving")
    return Health(status="ok", temporal="reachable")


def _degraded(why: Literal["not serving", "unreachable"]) -> JSONResponse:
    content = Health(status="degraded", temporal=why).model_dump(mode="json")
    return JSONResponse(status_code=503, content=content)
