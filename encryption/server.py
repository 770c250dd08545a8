"""The codec server: lets the Temporal Web UI (and the `temporal` CLI) show decrypted payloads.

Temporal's remote codec protocol: `POST /decode` and `POST /encode` take and answer
`{"payloads": [...]}` in protobuf JSON. The Web UI calls it from the browser, so answers carry
CORS headers for the UI's origin only (`CODEC_CORS_ORIGINS`).

Who may call it:
- on a loopback address and without tokens (the embedded stack): whoever can reach loopback, with
  a `Host` check so that a web page cannot reach it by rebinding a name to 127.0.0.1;
- anywhere else a token is required (`CODEC_SERVER_TOKENS_FILE`, `Authorization: Bearer …`),
  and the server refuses to start without one.
"""

from __future__ import annotations

import argparse
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from temporalio.api.common.v1 import Payload, Payloads

from encryption.codec import DecryptionError, EncryptionCodec
from encryption.keys import KeysError, require_keys
from tapraise.settings import is_loopback

log = logging.getLogger("tapraise_calls.codec")

DEFAULT_CODEC_PORT: Final = 8082
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""A page of payloads from the UI; Temporal refuses a single payload over 2 MB anyway."""

_Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


class CodecSettingsError(ValueError):
    """The codec server's settings cannot work as given; the message says what to set."""


class CodecServerSettings(BaseSettings):
    """The codec server's settings (environment variables and `.env`).

    Attributes:
        host: `CODEC_SERVER_HOST`, the address to listen on.
        port: `CODEC_SERVER_PORT`.
        tokens: `CODEC_SERVER_TOKENS`, comma-separated bearer tokens (prefer the file).
        tokens_file: `CODEC_SERVER_TOKENS_FILE`, a file of tokens, one per line.
        cors_origins: `CODEC_CORS_ORIGINS`, comma-separated origins of the Web UI.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    host: str = Field(
        default="127.0.0.1", validation_alias=AliasChoices("CODEC_SERVER_HOST", "host")
    )
    port: int = Field(
        default=DEFAULT_CODEC_PORT,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("CODEC_SERVER_PORT", "port"),
    )
    tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("CODEC_SERVER_TOKENS", "tokens")
    )
    tokens_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("CODEC_SERVER_TOKENS_FILE", "tokens_file")
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("CODEC_CORS_ORIGINS", "cors_origins")
    )

    @field_validator("tokens", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def secrets(self) -> tuple[bytes, ...]:
        """Every accepted token.

        Raises:
            CodecSettingsError: both token settings are set, or the file cannot be read.
        """
        if self.tokens and self.tokens_file:
            raise CodecSettingsError(
                "set CODEC_SERVER_TOKENS or CODEC_SERVER_TOKENS_FILE, not both"
            )
        values = [token.get_secret_value() for token in self.tokens]
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CodecSettingsError(
                    f"CODEC_SERVER_TOKENS_FILE ({self.tokens_file}) cannot be read: {exc}"
                ) from None
            values = [
                line.strip()
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
            if not values:
                raise CodecSettingsError(f"CODEC_SERVER_TOKENS_FILE ({self.tokens_file}) is empty")
        return tuple(value.encode() for value in values)


def _host_name(header: str) -> str:
    """The name a `Host` header names, without its port ("" when it names none)."""
    try:
        return urlsplit(f"//{header}").hostname or ""
    except ValueError:
        return ""


def create_app(
    codec: EncryptionCodec, secrets: tuple[bytes, ...], cors_origins: Sequence[str]
) -> FastAPI:
    """The codec server application.

    Args:
        codec: Encrypts and decrypts with the namespace's keys.
        secrets: Accepted bearer tokens; empty means loopback callers need none.
        cors_origins: The Web UI's origins, the only ones a browser may call from.
    """
    origins = frozenset(origin.rstrip("/") for origin in cors_origins)
    app = FastAPI(title="tapraise-calls codec server", docs_url=None, redoc_url=None)

    def cors_headers(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin not in origins:
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "content-type,x-namespace,authorization",
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    def refusal(request: Request) -> Response | None:
        """Why this caller may not use the codec, as an answer; None when it may."""
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") not in origins:
            return _problem(403, "this origin may not use the codec server (CODEC_CORS_ORIGINS)")
        if secrets:
            given = request.headers.get("authorization", "")
            token = given[7:].encode() if given[:7].lower() == "bearer " else b""
            matched = False
            for secret in secrets:
                matched |= hmac.compare_digest(token, secret)
            if not matched:
                return _problem(401, "missing or invalid bearer token", cors_headers(request))
        elif not is_loopback(_host_name(request.headers.get("host", ""))):
            # Without tokens only loopback callers are served; a page that rebinds its own name
            # to 127.0.0.1 still sends that name as the Host.
            return _problem(403, "without CODEC_SERVER_TOKENS only loopback names are served")
        return None

    async def transform(request: Request, apply: _Transform) -> Response:
        refused = refusal(request)
        if refused is not None:
            return refused
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _problem(413, f"a request body may hold at most {MAX_BODY_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_BODY_BYTES:
                return _problem(413, f"a request body may hold at most {MAX_BODY_BYTES} bytes")
        try:
            payloads = json_format.Parse(bytes(body), Payloads())
        except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
            return _problem(400, f"the body is not a Payloads JSON object: {exc}")
        try:
            done = await apply(payloads.payloads)
        except DecryptionError as exc:
            log.warning("cannot decode: %s", exc)
            return _problem(422, str(exc), cors_headers(request))
        return Response(
            json_format.MessageToJson(Payloads(payloads=done)),
            media_type="application/json",
            headers=cors_headers(request),
        )

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        """Decrypt payloads (what the Web UI asks for to show a history)."""
        return await transform(request, codec.decode)

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        """Encrypt payloads (what a UI or CLI signal with input sends through)."""
        return await transform(request, codec.encode)

    @app.options("/decode")
    @app.options("/encode")
    async def preflight(request: Request) -> Response:
        """CORS preflight: answered for the UI's origins only."""
        headers = cors_headers(request)
        return Response(status_code=204 if headers else 403, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Whether the server runs (nothing else is said to an unauthenticated caller)."""
        return {"status": "ok"}

    return app


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def build(settings: CodecServerSettings) -> FastAPI:
    """The application from settings, checked.

    Raises:
        CodecSettingsError: a non-loopback address without tokens, or unusable token settings.
        KeysError: no usable encryption keys.
    """
    secrets = settings.secrets()
    if not secrets and not is_loopback(settings.host):
        raise CodecSettingsError(
            f"the codec server would listen on {settings.host} without tokens: set "
            "CODEC_SERVER_TOKENS_FILE (bearer tokens, one per line), or listen on 127.0.0.1"
        )
    return create_app(EncryptionCodec(require_keys()), secrets, settings.cors_origins)


def main(argv: list[str] | None = None) -> None:
    """Run the codec server (`tapraise-calls-codec`) until interrupted."""
    import sys

    import uvicorn

    from starter.connect import load_env_file

    parser = argparse.ArgumentParser(
        prog="tapraise-calls-codec",
        description="Serve Temporal's remote codec protocol with the project's encryption keys.",
    )
    parser.add_argument("--host", help="address to listen on (default: CODEC_SERVER_HOST)")
    parser.add_argument("--port", type=int, help="port (default: CODEC_SERVER_PORT or 8082)")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="an origin of the Web UI (repeatable; default: CODEC_CORS_ORIGINS)",
    )
    args = parser.parse_args(argv)
    load_env_file()
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.cors_origin:
        overrides["cors_origins"] = args.cors_origin
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = CodecServerSettings(**overrides)
        app = build(settings)
    except (CodecSettingsError, KeysError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"codec server ready at http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
