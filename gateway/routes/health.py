"""`/healthz`: whether the gateway runs and Temporal answers (no token needed)."""

from datetime import timedelta
from typing import Final

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.dependencies import Context
from gateway.models import Health

HEALTH_TIMEOUT: Final = timedelta(seconds=3)

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Temporal does not answer."}},
)
async def healthz(context: Context) -> Health | JSONResponse:
    """Whether the gateway runs and Temporal answers (no token needed)."""
    try:
        client = await context.temporal.client()
        healthy = await client.service_client.check_health(timeout=HEALTH_TIMEOUT)
    except Exception as exc:  # any failure here is what the health check reports
        return _degraded(f"unreachable: {exc}")
    if not healthy:
        return _degraded("not serving")
    return Health(status="ok", temporal="reachable")


def _degraded(why: str) -> JSONResponse:
    content = Health(status="degraded", temporal=why).model_dump(mode="json")
    return JSONResponse(status_code=503, content=content)
