"""Settings of the HTTP gateway, from environment variables and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from gateway.limits import DEFAULT_MAX_CONCURRENT, DEFAULT_RATE, default_burst
from gateway.tokens import Grant, TokenSyntaxError, parse_entries
from starter.settings import StarterSettings
from tapraise.settings import is_loopback

DEFAULT_GATEWAY_PORT: Final = 8080


class GatewaySettingsError(ValueError):
    """The gateway's settings cannot work as given; the message says what to set."""


class GatewaySettings(StarterSettings):
    """The HTTP gateway's settings.

    Attributes:
        tokens: `GATEWAY_TOKENS`, comma-separated entries `<token>` (every scope) or
            `<token>:<scope>+<scope>` (scopes `start`, `act`, `read`).
        tokens_file: `GATEWAY_TOKENS_FILE`, a file of such entries, one a line (`#` comments and
            blank lines ignored), e.g. a Docker secret; not together with `GATEWAY_TOKENS`.
        allow_no_auth: `GATEWAY_ALLOW_NO_AUTH=true` runs without tokens: on a loopback address
            only, for requests addressed to a loopback name only (local development).
        host: `GATEWAY_HOST`, the address `serve` binds to.
        port: `GATEWAY_PORT`, the port `serve` listens on.
        rate_limit: `GATEWAY_RATE_LIMIT`, requests a second per token (per client address
            without one) on average; 0 switches it off.
        rate_burst: `GATEWAY_RATE_BURST`, requests a token may send at once (default: two
            seconds' worth).
        max_concurrent: `GATEWAY_MAX_CONCURRENT`, requests in flight per token (per client
            address without one); 0 switches it off.
    """

    tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("GATEWAY_TOKENS", "tokens")
    )
    tokens_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("GATEWAY_TOKENS_FILE", "tokens_file")
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
    rate_limit: float = Field(
        default=DEFAULT_RATE,
        ge=0,
        validation_alias=AliasChoices("GATEWAY_RATE_LIMIT", "rate_limit"),
    )
    rate_burst: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("GATEWAY_RATE_BURST", "rate_burst")
    )
    max_concurrent: int = Field(
        default=DEFAULT_MAX_CONCURRENT,
        ge=0,
        validation_alias=AliasChoices("GATEWAY_MAX_CONCURRENT", "max_concurrent"),
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        # One variable holds several tokens so that a new one can be rolled out before the old
        # one is withdrawn.
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @property
    def burst(self) -> int:
        """`rate_burst`, or its default for `rate_limit`."""
        return self.rate_burst if self.rate_burst is not None else default_burst(self.rate_limit)

    def token_entries(self) -> list[tuple[SecretStr, str]]:
        """Every token entry as written, with where it came from (the setting, the file's line).

        Raises:
            GatewaySettingsError: both settings are set, or the file cannot be read or holds
                no entry.
        """
        if self.tokens and self.tokens_file is not None:
            raise GatewaySettingsError(
                "set GATEWAY_TOKENS or GATEWAY_TOKENS_FILE, not both: which one holds the tokens "
                "that count?"
            )
        if self.tokens_file is None:
            return [(token, "GATEWAY_TOKENS") for token in self.tokens]
        try:
            lines = self.tokens_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise GatewaySettingsError(
                f"GATEWAY_TOKENS_FILE={self.tokens_file} cannot be read: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
            ) from None
        entries = [
            (SecretStr(line.strip()), f"GATEWAY_TOKENS_FILE line {number}")
            for number, line in enumerate(lines, start=1)
            if line.strip() and not line.strip().startswith("#")
        ]
        if not entries:
            raise GatewaySettingsError(
                f"GATEWAY_TOKENS_FILE={self.tokens_file} holds no token (one entry a line: "
                "<token> or <token>:act+read)"
            )
        return entries

    def grants(self) -> tuple[Grant, ...]:
        """The accepted tokens and their scopes.

        Raises:
            GatewaySettingsError: as `token_entries`, or for a malformed entry (named by its
                position, never by its text).
        """
        entries = self.token_entries()
        try:
            return parse_entries((entry.get_secret_value(), source) for entry, source in entries)
        except TokenSyntaxError as exc:
            raise GatewaySettingsError(str(exc)) from None

    def check(self) -> tuple[Grant, ...]:
        """Fail fast when the gateway would be open to more than its own machine.

        Returns:
            The accepted tokens; empty when the gateway runs without auth.

        Raises:
            GatewaySettingsError: the tokens are malformed or cannot be read; there are none and
                `GATEWAY_ALLOW_NO_AUTH` is not set; or it is, and the bind address is not
                loopback.
        """
        grants = self.grants()
        if grants:
            return grants
        if not self.allow_no_auth:
            raise GatewaySettingsError(
                "the gateway has no tokens: set GATEWAY_TOKENS (comma-separated bearer tokens) "
                "or GATEWAY_TOKENS_FILE, or GATEWAY_ALLOW_NO_AUTH=true for local development only"
            )
        if not is_loopback(self.host):
            raise GatewaySettingsError(
                f"GATEWAY_ALLOW_NO_AUTH=true works on a loopback address only, not on "
                f"{self.host!r} (GATEWAY_HOST, --host): set GATEWAY_TOKENS to serve other machines"
            )
        return grants
