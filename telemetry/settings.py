"""The observability settings of the worker and the gateway, from the environment and `.env`.

Unlike the other settings, an empty value here is a value: `WORKER_METRICS_ADDRESS=` switches
the worker's metrics listener off, where an unset variable keeps the default listener.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The contract's metrics ports, on loopback unless an address says otherwise: what a listener
# serves is for the machine's own scraper (or a container network), not for the world.
DEFAULT_WORKER_METRICS_ADDRESS: Final = "127.0.0.1:9464"
DEFAULT_GATEWAY_METRICS_ADDRESS: Final = "127.0.0.1:9465"
# How often the worker counts the calls in each phase (Temporal's visibility, seven counts).
DEFAULT_PHASE_COUNT_SECONDS: Final = 30.0


class LogFormat(StrEnum):
    """How the worker and the gateway write their log lines (`LOG_FORMAT`)."""

    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class ListenAddress:
    """Where a metrics listener binds: `host:port`, an IPv6 host in brackets (`[::1]:9464`)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Read `host:port`.

        Raises:
            ValueError: saying what is wrong with it.
        """
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9464)")
        bare = host.removeprefix("[").removesuffix("]")
        if bare != host or ":" in bare:
            try:
                ipaddress.IPv6Address(bare)
            except ValueError:
                raise ValueError(f"{text!r}: {bare!r} is not an IPv6 address") from None
        return cls(bare, int(port))

    @property
    def url(self) -> str:
        """Where the listener serves its metrics."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class TelemetrySettings(BaseSettings):
    """Metrics listeners, log lines and the phase count; tracing reads OpenTelemetry's own
    variables (see `telemetry.tracing`).

    Attributes:
        worker_metrics_address: `WORKER_METRICS_ADDRESS`, where the worker serves `/metrics`
            (Temporal's SDK metrics and the calls'); empty: no listener.
        gateway_metrics_address: `GATEWAY_METRICS_ADDRESS`, where the gateway serves its
            `/metrics`, apart from its public port; empty: no listener.
        phase_count_seconds: `WORKER_PHASE_COUNT_SECONDS`, how often the worker counts the calls
            per phase for `tapraise_calls_in_phase`; 0: never.
        log_format: `LOG_FORMAT`, `text` (the default) or `json` (one object a line).
        log_level: `LOG_LEVEL`.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=False
    )

    # Read as written (never as JSON): `host:port` is text.
    worker_metrics_address: Annotated[ListenAddress | None, NoDecode] = Field(
        default=ListenAddress.parse(DEFAULT_WORKER_METRICS_ADDRESS),
        validation_alias="WORKER_METRICS_ADDRESS",
    )
    gateway_metrics_address: Annotated[ListenAddress | None, NoDecode] = Field(
        default=ListenAddress.parse(DEFAULT_GATEWAY_METRICS_ADDRESS),
        validation_alias="GATEWAY_METRICS_ADDRESS",
    )
    phase_count_seconds: float = Field(
        default=DEFAULT_PHASE_COUNT_SECONDS, ge=0, validation_alias="WORKER_PHASE_COUNT_SECONDS"
    )
    log_format: LogFormat = Field(default=LogFormat.TEXT, validation_alias="LOG_FORMAT")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")

    @field_validator("worker_metrics_address", "gateway_metrics_address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if isinstance(value, str):
            return ListenAddress.parse(value) if value.strip() else None
        return value

    @field_validator("phase_count_seconds", "log_format", "log_level", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # Empty means "off" for the addresses only; anywhere else it means unset.
        if isinstance(value, str) and not value.strip():
            assert info.field_name is not None
            return cls.model_fields[info.field_name].default
        if info.field_name == "log_format" and isinstance(value, str):
            return value.strip().lower()
        return value
