"""The gate in front of every route: what a request must be before the application reads it.

An ASGI middleware, so that it runs before FastAPI reads and parses a body. In order:

1. a body declared (`Content-Length`) larger than its route takes (`Door.body_limit`) is refused
   (413) unread, before anything else is looked at;
2. without tokens (`GATEWAY_ALLOW_NO_AUTH`), the request is addressed to a loopback name and,
   when it says where it comes from (`Origin`), comes from the gateway's own origin (403):
   another site open in a browser can neither reach the gateway by a DNS name of its own nor
   post to it;
3. a POST, PUT or PATCH with a body says it is JSON (415): a browser sends no cross-site JSON
   without asking first, and the gateway never says yes;
4. the bearer token is one of the configured ones (401) and carries the route's scope (403);
5. the token (or, without one, the client address) is within its rate and its requests in
   flight (429 with `Retry-After`);
6. the body is read, counted as it streams in, and refused (413) once it passes the limit.

A refused request's body is never kept: one that streams in without a `Content-Length` is
counted as it is dropped, so that a body too large is answered 413 whoever sends it, and a
stranger makes the gateway hold nothing. Every refusal is a JSON problem, `{"detail": …,
"kind": …}`, and never repeats a token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.limits import BODY_LIMIT, ConcurrencyLimiter, RateLimiter
from gateway.tokens import Grant, Tokens, bearer_token
from gateway.tokens import Scope as TokenScope
from tapraise.settings import is_loopback

logger = logging.getLogger(__name__)

BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
JSON: Final = "application/json"
# Where the gate leaves the caller's grant for the routes (`request.state.grant`).
GRANT_STATE: Final = "grant"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Door:
    """What a route asks of its callers, declared on the route (`dependencies=[door(…)]`).

    The gate enforces it before the body is read; as the route's dependency it checks the scope
    once more, should a route ever be reached some other way.

    Attributes:
        scope: The token scope the route needs; None: any accepted token.
        body_limit: The largest body the route takes, in bytes.
        public: No token needed (the health check).
    """

    scope: TokenScope | None = None
    body_limit: int = BODY_LIMIT
    public: bool = False

    def __call__(self, request: Request) -> None:
        try:
            grant = getattr(request.state, GRANT_STATE)
        except AttributeError:
            raise HTTPException(
                status_code=403, detail="the request did not pass the gate"
            ) from None
        if self.scope is not None and grant is not None and self.scope not in grant.scopes:
            raise HTTPException(status_code=403, detail=missing_scope(self.scope))


PUBLIC_DOOR: Final = Door(public=True)
# A path no route takes still needs a token, so that probing it tells a stranger nothing.
NO_ROUTE: Final = Door()


def missing_scope(scope: TokenScope) -> str:
    return f"this token lacks the '{scope.value}' scope, which this route needs"


def route_door(route: BaseRoute) -> Door | None:
    """The door a route declares; None when it declares none (or several)."""
    if not isinstance(route, APIRoute):
        return None
    doors = [dep.dependency for dep in route.dependencies if isinstance(dep.dependency, Door)]
    return doors[0] if len(doors) == 1 else None


class Doors:
    """Finds a request's route, as the router will, and so its door.

    Args:
        routes: The application's routes (those of its routers, which add no path prefix).
        public_paths: The OpenAPI pages, open to all.
    """

    def __init__(self, routes: Sequence[BaseRoute], public_paths: Iterable[str]) -> None:
        self.routes = tuple(routes)
        self.public_paths = frozenset(public_paths)
        for route in self.routes:
            if route_door(route) is None:
                # A route without a door would be open to any token, or to none: fail at start.
                raise RuntimeError(f"route {getattr(route, 'path', route)!r} declares no door")

    def of(self, scope: Scope) -> Door:
        if scope["path"] in self.public_paths and scope["method"] in ("GET", "HEAD"):
            return PUBLIC_DOOR
        for route in self.routes:
            match, _child = route.matches(scope)
            if match is Match.FULL:
                return route_door(route) or NO_ROUTE
        return NO_ROUTE


@dataclass(frozen=True)
class Refusal:
    """One refusal, sent as a JSON problem."""

    status: int
    kind: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()

    async def send(self, send: Send) -> None:
        body = json.dumps({"detail": self.detail, "kind": self.kind}).encode()
        headers = [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.encode(), value.encode()) for name, value in self.headers),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> Refusal:
    return Refusal(413, "too_large", f"the body is larger than this route takes ({limit} bytes)")


class Gate:
    """The ASGI middleware (see the module's docstring).

    Args:
        app: The application behind the gate.
        doors: The routes' doors.
        tokens: The accepted tokens; none: the gateway runs without auth (loopback only).
        rate: The rate limiter.
        concurrency: The in-flight limiter.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        doors: Doors,
        tokens: Tokens,
        rate: RateLimiter,
        concurrency: ConcurrencyLimiter,
    ) -> None:
        self.app = app
        self.doors = doors
        self.tokens = tokens
        self.rate = rate
        self.concurrency = concurrency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        door = self.doors.of(scope)
        headers = Headers(scope=scope)
        grant: Grant | None = None
        refusal = self.screen(scope, headers, door)
        if refusal is None and self.tokens and not door.public:
            admitted = self.admit(headers, door)
            if isinstance(admitted, Refusal):
                refusal = admitted
            else:
                grant = admitted
        caller = Caller.of(scope, grant)
        if refusal is None:
            refusal = self.limit(caller)
        if refusal is not None:
            await self.refuse(refusal, door, headers, receive, send)
            return
        try:
            # Read within the caller's share of requests in flight: what one token can make the
            # gateway hold at once is bounded by its limits.
            body = await read_body(receive, door.body_limit)
            if isinstance(body, Refusal):
                await body.send(send)
            elif body is not None:  # None: the client went away
                scope.setdefault("state", {})[GRANT_STATE] = grant
                await self.app(scope, replay(body, receive), send)
        finally:
            self.concurrency.leave(caller)

    async def refuse(
        self, refusal: Refusal, door: Door, headers: Headers, receive: Receive, send: Send
    ) -> None:
        """Send `refusal`; a streamed body (no `Content-Length`) is counted first, as it is
        discarded, so that one larger than the route takes is answered 413 whoever sends it."""
        if refusal.status != 413 and "content-length" not in headers:
            counted = await read_body(receive, door.body_limit, keep=False)
            if counted is None:
                return
            if isinstance(counted, Refusal):
                refusal = counted
        await refusal.send(send)

    def screen(self, scope: Scope, headers: Headers, door: Door) -> Refusal | None:
        """What can be refused from the request line and headers alone."""
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return Refusal(400, "bad_request", "Content-Length is not a number")
            if int(declared) > door.body_limit:
                return too_large(door.body_limit)
        if not self.tokens:
            refusal = open_gateway_refusal(scope, headers)
            if refusal is not None:
                return refusal
        if scope["method"] in BODY_METHODS:
            content_type = headers.get("content-type")
            has_body = (declared is not None and int(declared) > 0) or (
                "transfer-encoding" in headers
            )
            if (content_type is not None or has_body) and not is_json(content_type):
                return Refusal(
                    415, "unsupported_media_type", f"send the body as {JSON} (Content-Type)"
                )
        return None

    def admit(self, headers: Headers, door: Door) -> Grant | Refusal:
        """The caller's grant, or why it is refused."""
        given = bearer_token(headers.get("authorization", "").encode("latin-1"))
        grant = self.tokens.match(given) if given is not None else None
        if grant is None:
            return Refusal(
                401,
                "unauthorized",
                "missing or invalid bearer token",
                (("www-authenticate", "Bearer"),),
            )
        if door.scope is not None and door.scope not in grant.scopes:
            return Refusal(403, "forbidden", missing_scope(door.scope))
        return grant

    def limit(self, caller: Caller) -> Refusal | None:
        """Count the request against its caller's rate and requests in flight (entered when
        None is returned: the caller must leave)."""
        retry_after = self.rate.acquire(caller)
        if retry_after:
            logger.info("%s is over its rate: refused for %d s", caller, retry_after)
            detail = (
                f"too many requests: at most {self.rate.rate:g} a second on average "
                f"(bursts of {self.rate.burst}); retry after {retry_after} s"
            )
            return Refusal(429, "rate_limited", detail, (("retry-after", str(retry_after)),))
        if not self.concurrency.enter(caller):
            logger.info("%s has %d requests in flight: refused", caller, self.concurrency.limit)
            detail = (
                f"too many requests in flight: at most {self.concurrency.limit} at once; "
                "retry after 1 s"
            )
            return Refusal(429, "busy", detail, (("retry-after", "1"),))
        return None


@dataclass(frozen=True)
class Caller:
    """Whom the limits count a request against: its token (by number, never by its text: logs
    travel further than secrets may), or the client address of a request without one."""

    kind: str
    name: str

    @classmethod
    def of(cls, scope: Scope, grant: Grant | None) -> Caller:
        if grant is not None:
            return cls("token", f"#{grant.number}")
        client = scope.get("client")
        return cls("client", str(client[0]) if client else "unknown")

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == JSON


def host_and_port(host_header: str, scheme: str) -> tuple[str, int] | None:
    """The host name and port a `Host` header names (the scheme's port when none), or None."""
    default = _DEFAULT_PORTS.get(scheme, 80)
    try:
        parsed = urlsplit(f"//{host_header}")
        port = parsed.port
    except ValueError:
        return None
    if not parsed.hostname or parsed.username is not None or parsed.path:
        return None
    return parsed.hostname.lower(), port if port is not None else default


def open_gateway_refusal(scope: Scope, headers: Headers) -> Refusal | None:
    """Without tokens, only this machine's own requests: a loopback `Host`, and an `Origin`
    (when sent) that is the gateway's own."""
    host_header = headers.get("host", "")
    host = host_and_port(host_header, scope.get("scheme", "http"))
    if host is None or not is_loopback(host[0]):
        return Refusal(
            403,
            "forbidden",
            "the gateway runs without tokens (GATEWAY_ALLOW_NO_AUTH) and answers requests "
            "addressed to localhost, 127.0.0.1 or [::1] only",
        )
    origin = headers.get("origin")
    if origin is not None and not is_own_origin(origin, host_header):
        return Refusal(
            403,
            "forbidden",
            "cross-origin request refused: the gateway runs without tokens and answers pages "
            "of its own origin only",
        )
    return None


def is_own_origin(origin: str, host_header: str) -> bool:
    """Whether `origin` (`scheme://host[:port]`) is the origin the `Host` header addresses."""
    try:
        parsed = urlsplit(origin)
        port = parsed.port
    except ValueError:
        return False
    if parsed.scheme not in _DEFAULT_PORTS or not parsed.hostname:
        return False
    ours = host_and_port(host_header, parsed.scheme)
    return ours == (parsed.hostname.lower(), port or _DEFAULT_PORTS[parsed.scheme])


async def read_body(receive: Receive, limit: int, keep: bool = True) -> bytes | Refusal | None:
    """The whole body, counted as it streams in: a refusal once it passes `limit`; None when
    the client went away. With `keep=False` the chunks are dropped as they are counted (and
    the body returned is empty)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large(limit)
        if keep:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the body read already, then the client's own messages."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
