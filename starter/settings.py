"""Settings of the starter CLI and the HTTP gateway, from environment variables and `.env`.

The Temporal connection itself is not here: `workflows.connect.connect()` reads Temporal's own
variables (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, …).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workflows.messages import TASK_QUEUE

DEFAULT_GATEWAY_PORT = 8080


class ConfigurationError(Exception):
    """The settings cannot work as given; the message says what to set."""


class StarterSettings(BaseSettings):
    """What both the CLI and the gateway need.

    Attributes:
        task_queue: `CALLS_TASK_QUEUE`, the task queue new calls are started on.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    task_queue: str = Field(
        default=TASK_QUEUE, validation_alias=AliasChoices("CALLS_TASK_QUEUE", "task_queue")
    )


class GatewaySettings(StarterSettings):
    """The HTTP gateway's settings.

    Attributes:
        tokens: `GATEWAY_TOKENS`, comma-separated bearer tokens accepted by the gateway.
        allow_no_auth: `GATEWAY_ALLOW_NO_AUTH=true` runs without tokens (local development only).
        host: `GATEWAY_HOST`, the address `serve` binds to.
        port: `GATEWAY_PORT`, the port `serve` listens on.
    """

    tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("GATEWAY_TOKENS", "tokens")
    )
    allow_no_auth: bool = Field(
        default=False, validation_alias=AliasChoices("GATEWAY_ALLOW_NO_AUTH", "allow_no_auth")
    )
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("GATEWAY_HOST", "host"))
    port: int = Field(
        default=DEFAULT_GATEWAY_PORT,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("GATEWAY_PORT", "port"),
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        # One variable holds several tokens so that a new one can be rolled out before the old
        # one is withdrawn.
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    def check(self) -> None:
        """Fail fast when the gateway would accept every request without being told to.

        Raises:
            ConfigurationError: no tokens configured and `GATEWAY_ALLOW_NO_AUTH` not set.
        """
        if not self.tokens and not self.allow_no_auth:
            raise ConfigurationError(
                "the gateway has no tokens: set GATEWAY_TOKENS (comma-separated bearer tokens), "
                "or GATEWAY_ALLOW_NO_AUTH=true for local development only"
            )
