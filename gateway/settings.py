"""Settings of the HTTP gateway, from environment variables and `.env`."""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from starter.settings import StarterSettings

DEFAULT_GATEWAY_PORT: Final = 8080


class GatewaySettingsError(ValueError):
    """The gateway's settings cannot work as given; the message says what to set."""


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
            GatewaySettingsError: no tokens configured and `GATEWAY_ALLOW_NO_AUTH` not set.
        """
        if not self.tokens and not self.allow_no_auth:
            raise GatewaySettingsError(
                "the gateway has no tokens: set GATEWAY_TOKENS (comma-separated bearer tokens), "
                "or GATEWAY_ALLOW_NO_AUTH=true for local development only"
            )
