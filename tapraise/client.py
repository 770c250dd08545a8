"""Async httpx client for the TapRaise calls API.

The client classifies failures into typed errors and never loops on retries: the caller (a
Temporal activity) owns retry policy. The single exception is a 401, after which the signed
token is discarded and the same request is sent once more with a freshly signed token. A 401
means the request was not processed, so the repeat is safe even for a create.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractContextManager, ExitStack, aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol, Self, TypedDict, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel, ValidationError

from tapraise.auth import ServiceAccount, TokenSigner
from tapraise.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    describe_problem,
    make_status_error,
)
from tapraise.models import (
    AddAttemptRequest,
    Call,
    CallPage,
    CancelCallRequest,
    CompleteCallRequest,
    CreateCallRequest,
    ExpireCallRequest,
    MarkProcessedEntry,
    MarkProcessedRequest,
    format_timestamp,
    to_millis,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=20.0)
# Connections kept open to TapRaise. httpx checks every pooled connection on each request, so a
# large pool costs CPU on every request (measured: 3.2 ms per request with httpx's default of
# 100, 2.1 ms with 10); ten keep-alive connections carry hundreds of requests a second.
DEFAULT_MAX_CONNECTIONS = 10
MAX_PAGE_SIZE = 100
# `find_call`. The first look reads this many calls at the oldest end of those requested from
# the requestedAt given on: the call is there unless others share its instant.
FIND_FIRST_PAGE = 5
# How much later than the requestedAt given a call may have been requested and still be found.
FIND_LATER = timedelta(minutes=5)
# When the call is not at the requestedAt given, the windows before it searched next, narrow
# first: most calls not found at their instant were requested seconds or days before it.
FIND_WINDOWS = (
    timedelta(seconds=1),
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=31),
    timedelta(days=400),
)
# TapRaise's precision: `requestedAfter` (exclusive) one millisecond before a call includes it.
_MILLISECOND = timedelta(milliseconds=1)
API_PREFIX = "/api/v1"

try:
    _VERSION = version("tapraise-calls")
except PackageNotFoundError:  # running from a source tree that is not installed
    _VERSION = "0+unknown"
USER_AGENT = f"tapraise-calls/{_VERSION}"

_M = TypeVar("_M", bound=BaseModel)


class Endpoint(StrEnum):
    """The TapRaise endpoints the client calls, by short name (a bounded label for observers)."""

    LIST = "list"
    CREATE = "create"
    ADD_ATTEMPT = "add-attempt"
    COMPLETE = "complete"
    CANCEL = "cancel"
    EXPIRE = "expire"
    MARK_PROCESSED = "mark-processed"


@dataclass
class ObservedRequest:
    """One HTTP request to TapRaise, as a `RequestObserver` sees it.

    It names the endpoint and the path's template, never the path itself: the call's uuid and
    the list's filters stay out of whatever observers record.

    Attributes:
        endpoint: Which endpoint is called.
        method: The HTTP method.
        template: The path with its parameters named, e.g.
            ``/api/v1/calls/{call_uuid}/actions/complete``.
        server: TapRaise's host name.
        headers: Headers an observer adds to the request (e.g. a trace context).
        status: The HTTP status TapRaise answered; None while the request runs, and when it
            got no answer (a timeout or a connection failure).
    """

    endpoint: Endpoint
    method: str
    template: str
    server: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None


class RequestObserver(Protocol):
    """Watches each HTTP request the client sends (metrics, tracing), without owning any.

    ``observe`` returns a context manager that the client enters just before it sends the
    request and leaves once the answer's status is known (set on ``request.status``), or with
    the transport's exception when there is no answer. A request repeated after a 401 is
    observed twice.
    """

    def observe(self, request: ObservedRequest) -> AbstractContextManager[object]: ...


class _ListFilters(TypedDict, total=False):
    """The filters of ``GET /api/v1/calls`` (see ``TapRaiseClient.list_calls_page``)."""

    requested_after: datetime | None
    updated_after: datetime | None
    external_application_name: str | None
    external_reference_id: str | None


class TapRaiseClient:
    """A typed client for the TapRaise calls API.

    Use it as an async context manager, or call ``aclose()`` when done. One instance holds one
    connection pool; share it between concurrent tasks.

    Args:
        base_url: The TapRaise root, e.g. ``https://api.example.org`` (a trailing ``/api/v1``
            is accepted and ignored).
        account: The service account that signs the requests.
        timeout: Per-phase timeouts; defaults to connect 5 s, read 15 s, write 10 s, and 20 s
            waiting for a free connection.
        max_connections: Connections kept open at most (requests beyond wait for one).
        transport: An httpx transport, for tests.
        signer: The token signer; defaults to ``TokenSigner(account)``.
        observers: Told of every request sent (see ``RequestObserver``).
    """

    def __init__(
        self,
        base_url: str,
        account: ServiceAccount,
        *,
        timeout: httpx.Timeout | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        signer: TokenSigner | None = None,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        self._signer = signer or TokenSigner(account)
        self._observers = tuple(observers)
        root = base_url.rstrip("/").removesuffix(API_PREFIX)
        self._http = httpx.AsyncClient(
            base_url=root,
            timeout=timeout or DEFAULT_TIMEOUT,
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        )

    @property
    def base_url(self) -> str:
        """The TapRaise root URL requests are sent to."""
        return str(self._http.base_url).rstrip("/")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- calls ------------------------------------------------------------------------------

    async def create_call(self, req: CreateCallRequest) -> Call:
        """Create a call (``POST /api/v1/calls``, 201).

        Raises:
            ConflictError: A call with ``req.uuid`` already exists (409).
            BadRequestError, PermissionDeniedError: See the API description.
        """
        response = await self._request(Endpoint.CREATE, "POST", "/calls", json=req.to_wire())
        return _parse(Call, response)

    async def add_attempt(
        self, call_uuid: UUID | str, req: AddAttemptRequest | None = None
    ) -> Call:
        """Record an attempt to reach the person (``PUT …/actions/add-attempt``).

        Raises:
            NotFoundError: The call does not exist (404).
            BadRequestError: The call is final, or the attempt exceeds the maximum (400).
        """
        return await self._action(call_uuid, Endpoint.ADD_ATTEMPT, req or AddAttemptRequest())

    async def complete_call(self, call_uuid: UUID | str, req: CompleteCallRequest) -> Call:
        """Mark a call as completed with its result (``PUT …/actions/complete``).

        Raises:
            ConflictError: Already completed (409).
            BadRequestError: Cancelled or expired (400).
            NotFoundError: The call does not exist (404).
        """
        return await self._action(call_uuid, Endpoint.COMPLETE, req)

    async def cancel_call(
        self, call_uuid: UUID | str, req: CancelCallRequest | None = None
    ) -> Call:
        """Cancel a call (``PUT …/actions/cancel``).

        Raises:
            ConflictError: Already cancelled (409).
            BadRequestError: Completed or expired (400).
            NotFoundError: The call does not exist (404).
        """
        return await self._action(call_uuid, Endpoint.CANCEL, req or CancelCallRequest())

    async def expire_call(
        self, call_uuid: UUID | str, req: ExpireCallRequest | None = None
    ) -> Call:
        """Expire a call (``PUT …/actions/expire``); without ``expired_at`` it expires now.

        Raises:
            ConflictError: Already expired (409).
            BadRequestError: Completed or cancelled (400).
            PermissionDeniedError: The account's scope does not allow expiring (403).
            NotFoundError: The call does not exist (404).
        """
        return await self._action(call_uuid, Endpoint.EXPIRE, req or ExpireCallRequest())

    async def list_calls_page(
        self,
        *,
        requested_after: datetime | None = None,
        updated_after: datetime | None = None,
        external_application_name: str | None = None,
        external_reference_id: str | None = None,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
    ) -> CallPage:
        """Fetch one page of ``GET /api/v1/calls`` (newest first).

        Args:
            requested_after: Only calls requested after this aware datetime.
            updated_after: Only calls changed after this aware datetime.
            external_application_name: With ``external_reference_id``, find calls by their
                external reference; the string ``"null"`` for both finds calls without one.
            external_reference_id: See ``external_application_name``.
            first: Page size going forward (1-100); TapRaise's default is 10.
            after: Cursor to continue after (``page_info.end_cursor``).
            last: Page size going backward (1-100).
            before: Cursor to continue before (``page_info.start_cursor``).

        Raises:
            ValueError: On a page size outside 1-100, ``first`` with ``last``, ``after`` with
                ``before``, or a naive datetime (TapRaise would reject all of these).
        """
        if first is not None and last is not None:
            raise ValueError("first and last cannot be combined")
        if after is not None and before is not None:
            raise ValueError("after and before cannot be combined")
        for name, size in (("first", first), ("last", last)):
            if size is not None and not 1 <= size <= MAX_PAGE_SIZE:
                raise ValueError(f"{name} must be between 1 and {MAX_PAGE_SIZE}, got {size}")
        candidates: dict[str, str | int | None] = {
            "first": first,
            "after": after,
            "last": last,
            "before": before,
            "requestedAfter": _query_time("requested_after", requested_after),
            "updatedAfter": _query_time("updated_after", updated_after),
            "externalApplicationName": external_application_name,
            "externalReferenceId": external_reference_id,
        }
        params: dict[str, str | int] = {
            key: value for key, value in candidates.items() if value is not None
        }
        response = await self._request(Endpoint.LIST, "GET", "/calls", params=params)
        return _parse(CallPage, response)

    async def list_calls(
        self,
        *,
        requested_after: datetime | None = None,
        updated_after: datetime | None = None,
        external_application_name: str | None = None,
        external_reference_id: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        backward: bool = False,
    ) -> AsyncIterator[Call]:
        """Iterate over every call matching the filters, fetching pages as needed.

        Forward (the default) pages with ``first``/``after`` and yields the whole list newest
        first. Backward pages with ``last``/``before``: it starts with the oldest page and moves
        to newer pages, yielding each page in the order TapRaise presents it (newest first
        within the page), so the overall sequence is sorted only page by page.

        Args:
            requested_after: See ``list_calls_page``.
            updated_after: See ``list_calls_page``.
            external_application_name: See ``list_calls_page``.
            external_reference_id: See ``list_calls_page``.
            page_size: Calls per request (1-100).
            backward: Page from the end of the list towards its start.

        Yields:
            Each call once, as pages arrive.
        """
        filters = _ListFilters(
            requested_after=requested_after,
            updated_after=updated_after,
            external_application_name=external_application_name,
            external_reference_id=external_reference_id,
        )
        pages = self._pages(filters, backward=backward, first_size=page_size, size=page_size)
        async with aclosing(pages):
            async for page in pages:
                for call in page.calls:
                    yield call

    async def _pages(
        self, filters: _ListFilters, *, backward: bool, first_size: int, size: int = MAX_PAGE_SIZE
    ) -> AsyncGenerator[CallPage, None]:
        """Fetch the pages of one list in turn, each when the previous one is done with.

        Forward pages with ``first``/``after`` from the newest call; backward pages with
        ``last``/``before`` from the oldest. The first page holds ``first_size`` calls, the
        others ``size``. It ends when TapRaise has no more pages.
        """
        cursor: str | None = None
        count = first_size
        while True:
            page = await self.list_calls_page(
                **filters,
                first=None if backward else count,
                after=None if backward else cursor,
                last=count if backward else None,
                before=cursor if backward else None,
            )
            yield page
            info = page.page_info
            more = info.has_previous_page if backward else info.has_next_page
            next_cursor = info.start_cursor if backward else info.end_cursor
            # A cursor that does not move would loop forever; treat it as the end.
            if not more or next_cursor is None or next_cursor == cursor:
                return
            cursor, count = next_cursor, size

    async def find_call(self, call_uuid: UUID | str, requested_at: datetime) -> Call | None:
        """Find one call by uuid (TapRaise has no GET by uuid).

        The list is newest first, so each look pages it *backward*, from the oldest end of the
        calls requested after some instant. The first look lists the calls requested from
        ``requested_at`` on and reads the oldest few: when ``requested_at`` is right (to the
        millisecond), the call is there, found in one small request however many calls came
        after it. Otherwise the look goes on, in pages of 100, through the calls requested up
        to ``FIND_LATER`` (5 minutes) after ``requested_at`` (a call requested a little later
        than the caller thinks). Then it widens to the windows of ``FIND_WINDOWS`` before
        ``requested_at`` (1 second, 1 minute, 1 hour, 1 day, 31 days, 400 days): each window
        is paged from its oldest end and left as soon as it reaches calls the narrower window
        covered, so every call is examined once, and a call requested seconds or days before
        the time given (a retried create that stamped a later time, a call id started again)
        is found without knowing when.

        Cost: at most 7 + ceil(M / 100) list requests, where M is the number of calls visible
        to the account requested in the 400 days before ``requested_at`` or the 5 minutes after
        it (requestedAt after ``requested_at`` - 400 days and at most ``requested_at`` + 5
        minutes, to the millisecond): 1 + ceil(U / 100) for the first look, U being those
        requested in the 5 minutes from ``requested_at``, and 1 + floor(n / 100) for each of
        the 6 windows, n being those requested in it but not in the narrower one.

        Args:
            call_uuid: The call to find.
            requested_at: When the call was requested, as far as the caller knows (aware).

        Returns:
            The call, or ``None`` when the account sees no call with that uuid requested in
            that span.

        Raises:
            ValueError: ``requested_at`` is naive.
        """
        if requested_at.tzinfo is None or requested_at.utcoffset() is None:
            raise ValueError("requested_at must be timezone-aware")
        wanted = _as_uuid(call_uuid)
        at = to_millis(requested_at)
        covered = _shifted(at, -_MILLISECOND)
        found = await self._find_in_window(
            wanted, covered, FIND_FIRST_PAGE, examined=None, until=_shifted(at, FIND_LATER)
        )
        for width in FIND_WINDOWS:
            if found is not None or covered is None:
                # Found, or the last window already reached back to the start of the list.
                break
            start = _shifted(at, -width)
            found = await self._find_in_window(
                wanted, start, MAX_PAGE_SIZE, examined=covered, until=covered
            )
            covered = start
        return found

    async def _find_in_window(
        self,
        wanted: UUID,
        requested_after: datetime | None,
        first_page: int,
        *,
        examined: datetime | None,
        until: datetime | None,
    ) -> Call | None:
        """Page the calls requested after ``requested_after`` from the oldest, looking for one.

        Args:
            wanted: The uuid to look for.
            requested_after: The window's (exclusive) start; None for the whole list.
            first_page: The size of the first page (later pages hold 100).
            examined: Calls requested after this were looked at by a narrower window and are
                skipped; None when none were.
            until: Stop after the page that reaches a call requested after this; None to page
                to the newest call.
        """
        filters = _ListFilters(requested_after=requested_after)
        pages = self._pages(filters, backward=True, first_size=first_page)
        async with aclosing(pages):
            async for page in pages:
                for call in page.calls:
                    if call.uuid == wanted and (examined is None or call.requested_at <= examined):
                        return call
                if not page.calls:
                    return None
                # Pages run from the oldest towards the newest: once one reaches past `until`,
                # the rest of the window lies beyond it.
                if until is not None and max(c.requested_at for c in page.calls) > until:
                    return None
        return None

    # --- entity access ----------------------------------------------------------------------

    async def mark_processed(self, entries: Sequence[MarkProcessedEntry]) -> None:
        """Mark entities as processed (``POST /api/v1/entity-access/actions/mark-processed``).

        An empty sequence sends nothing.

        Raises:
            BadRequestError: Some entries failed; ``body["errors"]`` lists them per entry
                (``MarkProcessedErrors.model_validate(err.body)`` parses it).
        """
        if not entries:
            return
        body = MarkProcessedRequest(entries=list(entries)).to_wire()
        await self._request(
            Endpoint.MARK_PROCESSED, "POST", "/entity-access/actions/mark-processed", json=body
        )

    # --- plumbing ---------------------------------------------------------------------------

    async def _action(
        self,
        call_uuid: UUID | str,
        action: Endpoint,
        req: AddAttemptRequest | CompleteCallRequest | CancelCallRequest | ExpireCallRequest,
    ) -> Call:
        path = f"/calls/{_as_uuid(call_uuid)}/actions/{action.value}"
        template = f"/calls/{{call_uuid}}/actions/{action.value}"
        response = await self._request(action, "PUT", path, json=req.to_wire(), template=template)
        return _parse(Call, response)

    async def _request(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str | int] | None = None,
        template: str | None = None,
    ) -> httpx.Response:
        url = API_PREFIX + path
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._signer.token()}"}
            try:
                response = await self._send(
                    endpoint, method, url, API_PREFIX + (template or path), json, params, headers
                )
            except httpx.TimeoutException as exc:
                raise APITimeoutError(
                    f"TapRaise timed out on {method} {url} ({type(exc).__name__})",
                    request=_request_of(exc),
                ) from exc
            except httpx.TransportError as exc:
                raise APIConnectionError(
                    f"cannot reach TapRaise for {method} {url}: {exc or type(exc).__name__}",
                    request=_request_of(exc),
                ) from exc
            logger.debug("TapRaise %s %s -> %s", method, url, response.status_code)
            if response.status_code == 401 and attempt == 1:
                # The token may have been signed against a stale clock or key rotation; one
                # fresh signature is worth a try, a second 401 is final.
                self._signer.invalidate()
                continue
            if response.is_success:
                return response
            raise make_status_error(response)
        raise AssertionError("unreachable")

    async def _send(
        self,
        endpoint: Endpoint,
        method: str,
        url: str,
        template: str,
        json: Any,
        params: dict[str, str | int] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        """One HTTP request, within every observer's watch."""
        if not self._observers:
            return await self._http.request(method, url, json=json, params=params, headers=headers)
        observed = ObservedRequest(endpoint, method, template, self._http.base_url.host)
        with ExitStack() as watching:
            for observer in self._observers:
                watching.enter_context(observer.observe(observed))
            response = await self._http.request(
                method, url, json=json, params=params, headers={**observed.headers, **headers}
            )
            observed.status = response.status_code
        return response


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"TapRaise answered {response.status_code} on {response.request.method} "
            f"{response.request.url.path} with a body that is not a valid {model.__name__}: "
            f"{exc.error_count()} problem(s), first: {describe_problem(exc.errors()[0], 'body')}",
            response=response,
        ) from exc


def _as_uuid(value: UUID | str) -> UUID:
    # Parsing also keeps anything but a uuid out of the URL path.
    return value if isinstance(value, UUID) else UUID(str(value))


def _shifted(moment: datetime, delta: timedelta) -> datetime | None:
    """``moment + delta``, or None when that falls outside the calendar (no bound at all)."""
    try:
        return moment + delta
    except OverflowError:
        return None


def _query_time(name: str, value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return format_timestamp(value)


def _request_of(exc: httpx.RequestError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:  # raised when httpx never attached a request
        return None
