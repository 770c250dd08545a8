"""The faults a run switches on in the sandbox, and their end when it heals."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import httpx

from tests.chaos.config import ChaosConfig

# The endpoints whose PUTs may be applied after the client gave up (`late_apply`).
_LATE_APPLY_ENDPOINTS: Final = ("add-attempt", "complete", "cancel", "expire")


def _fault_rules(
    config: ChaosConfig, held_creates: int = 0, seed: int | None = None
) -> dict[str, Any]:
    """The sandbox's fault rules: every kind of the `tapraise` faults, plus `held_creates`
    creates applied at once and answered after the client gave up (a kill burst's window)."""
    shares: dict[str, Any] = {}
    if config.has("tapraise"):
        shares = {
            "error500": config.error_share / 2,
            "error503": config.error_share / 2,
            "error429": config.rate_limit_share,
            "retryAfterSeconds": 1,
            "late": config.late_share,
            "latencyShare": config.latency_share,
            "latencySeconds": config.latency_seconds,
        }
    late = {"lateDelaySeconds": config.late_delay_seconds}
    rules: list[dict[str, Any]] = []
    if shares:
        rules.append({"endpoint": "*", **shares, **late})
        rules += [
            {
                "endpoint": endpoint,
                **shares,
                **late,
                "lateApply": config.late_apply_share,
                "lateApplyDelaySeconds": config.late_apply_delay_seconds,
            }
            for endpoint in _LATE_APPLY_ENDPOINTS
        ]
    if held_creates:
        rules.append({"endpoint": "create", **shares, **late, "next": ["late"] * held_creates})
    return {"seed": config.seed if seed is None else seed, "rules": rules}


class Faults:
    """What the run does to the sandbox: fault rules, settings, and their end when it heals.

    One lock orders the changes, so that nothing is switched on again once the faults stopped.
    """

    def __init__(self, config: ChaosConfig, admin: httpx.AsyncClient, began: float) -> None:
        self.config = config
        self.admin = admin
        self.began = began
        self.healed = False
        self._lock = asyncio.Lock()
        self._bursts = 0
        self._outage_began: float | None = None
        self.outage: tuple[float, float] | None = None

    async def start(self) -> None:
        """Switch the run's faults on; with `messages`, TapRaise's allow-list of result codes."""
        if self.config.has("tapraise"):
            await self._put("/faults", _fault_rules(self.config))
        if self.config.has("messages"):
            await self._put("/settings", {"resultCodes": list(self.config.result_codes)})

    async def hold_create_answers(self, creates: int) -> bool:
        """Answer the next `creates` creates late (applied at once); False once healed."""
        async with self._lock:
            if self.healed:
                return False
            self._bursts += 1
            rules = _fault_rules(self.config, creates, self.config.seed + self._bursts)
            await self._put("/faults", rules)
            return True

    async def withdraw_credentials(self) -> bool:
        """Start the credential outage (every API request answered 401); False once healed."""
        async with self._lock:
            if self.healed:
                return False
            seconds = self.config.credential_outage_seconds
            await self._put("/settings", {"credentialOutageSeconds": seconds})
            self._outage_began = time.monotonic()
            self.outage = (self._outage_began - self.began, seconds)
            return True

    async def heal(self) -> None:
        """Stop every fault, an outage still running included; the allow-list stays."""
        async with self._lock:
            self.healed = True
            (await self.admin.delete("/faults")).raise_for_status()
            if self._outage_began is not None and self.outage is not None:
                await self._put("/settings", {"credentialOutage": False})
                lasted = min(self.outage[1], time.monotonic() - self._outage_began)
                self.outage = (self.outage[0], lasted)

    async def _put(self, path: str, body: dict[str, Any]) -> None:
        (await self.admin.put(path, json=body)).raise_for_status()
