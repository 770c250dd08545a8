"""Run-time switchable fault injection for the TapRaise endpoints.

A rule per endpoint (or ``*`` for all) gives a probability per fault kind, drawn from a seeded
random generator, and a ``next`` queue of forced faults consumed one per request, for
deterministic tests. Faults live in memory: a restart starts without any.

The kinds:

- ``500``, ``503``, ``429``: refused before anything is looked at; nothing is applied.
- ``late``: applied at once, answered ``lateDelaySeconds`` later (a client with a shorter read
  timeout gives up on a change that is already made).
- ``late_apply``: held ``lateApplyDelaySeconds``, then applied and answered (a client with a
  shorter read timeout gives up on a change that is not made yet, and a look-up before the
  delay has passed does not see it).
- ``latency``: a delay before handling, drawn apart from the others (``latencyShare``).
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sandbox.validation import Action, CamelModel

# "*" stands for every endpoint without a rule of its own.
Endpoint = Literal["*", Action]
FaultKind = Literal["500", "503", "429", "late", "late_apply", "latency"]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class FaultRule(CamelModel):
    """Faults for one endpoint (``*``: every endpoint without a rule of its own)."""

    endpoint: Endpoint = "*"
    error500: Share = 0.0
    error503: Share = 0.0
    error429: Share = 0.0
    retry_after_seconds: Annotated[int, Field(ge=0)] = 1
    late: Share = 0.0
    late_delay_seconds: Annotated[float, Field(ge=0)] = 2.0
    late_apply: Share = 0.0
    late_apply_delay_seconds: Annotated[float, Field(ge=0)] = 3.0
    latency_share: Share = 0.0
    latency_seconds: Annotated[float, Field(ge=0)] = 0.0
    next: list[FaultKind] = Field(default_factory=list)

    @model_validator(mode="after")
    def _shares_fit(self) -> FaultRule:
        # The error kinds, "late" and "late_apply" exclude each other, so their shares must fit
        # in one draw.
        if self.error500 + self.error503 + self.error429 + self.late + self.late_apply > 1.0:
            raise ValueError("error500 + error503 + error429 + late + lateApply must not exceed 1")
        return self


class FaultConfig(CamelModel):
    """Body of ``PUT /_sandbox/faults``."""

    seed: int | None = None
    rules: list[FaultRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_rule_per_endpoint(self) -> FaultConfig:
        endpoints = [rule.endpoint for rule in self.rules]
        if len(endpoints) != len(set(endpoints)):
            raise ValueError("at most one rule per endpoint")
        return self


@dataclass(frozen=True)
class Fault:
    """What to do to one request.

    Attributes:
        kind: ``"500"``, ``"503"``, ``"429"``, ``"late"``, ``"late_apply"`` or None (no
            failure, maybe latency).
        latency: Seconds to wait before handling.
        late_delay: Seconds to wait after applying the change, before answering.
        late_apply_delay: Seconds to hold the request before applying it (``late_apply``).
        retry_after: ``Retry-After`` seconds for a 429.
    """

    kind: FaultKind | None
    latency: float = 0.0
    late_delay: float = 0.0
    late_apply_delay: float = 0.0
    retry_after: int = 1

    @classmethod
    def of(cls, rule: FaultRule, kind: FaultKind | None, latency: float) -> Fault:
        """A fault of ``kind`` after ``latency`` seconds, with the delays ``rule`` sets."""
        return cls(
            kind,
            latency,
            rule.late_delay_seconds,
            rule.late_apply_delay_seconds,
            rule.retry_after_seconds,
        )

    @property
    def label(self) -> str | None:
        """The kind to record in the request log (``latency`` when only delayed)."""
        return self.kind or ("latency" if self.latency > 0 else None)


class FaultInjector:
    """Holds the fault configuration and decides per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._rules: dict[str, FaultRule] = {}
        self._queues: dict[str, deque[FaultKind]] = {}
        self._random = random.Random()
        self._injected: Counter[tuple[str, str]] = Counter()

    def configure(self, config: FaultConfig) -> None:
        """Replace the rules (and reseed when a seed is given); counters keep running."""
        with self._lock:
            self._config = config
            self._rules = {rule.endpoint: rule for rule in config.rules}
            self._queues = {rule.endpoint: deque(rule.next) for rule in config.rules}
            self._random = random.Random(config.seed)

    def clear(self) -> None:
        """Remove every rule."""
        self.configure(FaultConfig())

    def decide(self, endpoint: str) -> Fault | None:
        """Pick the fault for one request to ``endpoint``, or None."""
        with self._lock:
            key = endpoint if endpoint in self._rules else "*"
            rule = self._rules.get(key)
            if rule is None:
                return None
            queue = self._queues[key]
            if queue:
                kind = queue.popleft()
                if kind == "latency":  # the rule's delay, and nothing else
                    fault = Fault.of(rule, None, rule.latency_seconds)
                else:
                    fault = Fault.of(rule, kind, 0.0)
            else:
                fault = self._draw(rule)
            if fault.label is not None:
                self._injected[(endpoint, fault.label)] += 1
            return fault

    def _draw(self, rule: FaultRule) -> Fault:
        latency = rule.latency_seconds if self._random.random() < rule.latency_share else 0.0
        shares: tuple[tuple[FaultKind, float], ...] = (
            ("500", rule.error500),
            ("503", rule.error503),
            ("429", rule.error429),
            ("late", rule.late),
            ("late_apply", rule.late_apply),
        )
        draw = self._random.random()
        kind: FaultKind | None = None
        for candidate, share in shares:
            if draw < share:
                kind = candidate
                break
            draw -= share
        return Fault.of(rule, kind, latency)

    def snapshot(self) -> dict[str, Any]:
        """Return the configuration, the forced faults still queued, and the counters."""
        with self._lock:
            injected: dict[str, dict[str, int]] = {}
            for (endpoint, kind), count in sorted(self._injected.items()):
                injected.setdefault(endpoint, {})[kind] = count
            return {
                "seed": self._config.seed,
                "rules": [rule.model_dump(by_alias=True) for rule in self._config.rules],
                "queued": {key: list(queue) for key, queue in self._queues.items() if queue},
                "injected": injected,
            }
