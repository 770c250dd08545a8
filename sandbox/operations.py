"""The TapRaise operations: what each API endpoint does to the store, with TapRaise's rules
and status codes, and the same changes made by a user in the TapRaise app.

Every operation runs inside one store transaction and either answers or raises an
:class:`ApiError`; nothing is written when it raises.

Every change of a call, its creation included, sets ``lastUpdatedAt``: the time of the request
in milliseconds, or one millisecond after the latest ``lastUpdatedAt`` already given out when
that is later. Changes are made one at a time (one transaction each), so no two share a
``lastUpdatedAt``, and a change committed after a page of ``GET /api/v1/calls`` was answered is
later than every ``lastUpdatedAt`` on that page, even within the same millisecond.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sandbox import store
from sandbox.store import Account, CallFilter, StoredCall
from sandbox.validation import (
    FINAL_STATUSES,
    AddAttemptIn,
    ApiError,
    AppCallIn,
    AppCancelIn,
    AppExpireIn,
    CancelIn,
    CompleteIn,
    CreateCallIn,
    ExpireIn,
    MarkProcessedIn,
    ResultIn,
    iso,
    parse_body,
    parse_iso,
    to_ms,
)

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
ACTION_BODIES: dict[str, type[AddAttemptIn | CompleteIn | CancelIn | ExpireIn]] = {
    "add-attempt": AddAttemptIn,
    "complete": CompleteIn,
    "cancel": CancelIn,
    "expire": ExpireIn,
}
APP_ACTION_BODIES: dict[str, type[AddAttemptIn | CompleteIn | CancelIn | ExpireIn]] = {
    "add-attempt": AddAttemptIn,
    "complete": CompleteIn,
    "cancel": AppCancelIn,
    "expire": AppExpireIn,
}
"""The changes a user can make to a call in the TapRaise app: the API's actions, whose bodies
the app's cancel and expire extend with the ``userUuid`` of the user."""
_MILLISECOND = timedelta(milliseconds=1)

# What an endpoint answers: (status, JSON body or None, the call's uuid when it names one).
Outcome = tuple[int, Any, str | None]
# An endpoint's work, given (connection, account, raw body, now); the app binds what it takes
# before these (settings, the path's parts, the query).
Operation = Callable[[sqlite3.Connection, Account, bytes, datetime], Outcome]
# A change made in the TapRaise app, given (connection, raw body, now): no service account.
AppOperation = Callable[[sqlite3.Connection, bytes, datetime], Outcome]


@dataclass
class Settings:
    """Rules that tests may change at run time.

    Attributes:
        clock_skew_seconds: How far in the future an action's timestamp may lie.
        result_codes: When set, the only result codes accepted.
        credential_outage: Whether every API request is refused with 401, as when TapRaise
            has withdrawn the service accounts' credentials.
        credential_outage_until: When the outage ends by itself; None while it lasts until
            switched off.
    """

    clock_skew_seconds: float = 300
    result_codes: list[str] | None = None
    credential_outage: bool = False
    credential_outage_until: datetime | None = None

    def start_credential_outage(self, until: datetime | None) -> None:
        """Refuse every API request from now on, until ``until`` or until switched off."""
        self.credential_outage, self.credential_outage_until = True, until

    def end_credential_outage(self) -> None:
        """Accept valid tokens again."""
        self.credential_outage, self.credential_outage_until = False, None

    def credentials_withdrawn(self, now: datetime) -> bool:
        """Whether a request arriving at ``now`` falls in a credential outage."""
        until = self.credential_outage_until
        if self.credential_outage and until is not None and now >= until:
            self.end_credential_outage()
        return self.credential_outage

    def as_json(self, now: datetime) -> dict[str, Any]:
        """Return the settings with their wire names, as they stand at ``now``."""
        withdrawn = self.credentials_withdrawn(now)
        return {
            "clockSkewSeconds": self.clock_skew_seconds,
            "resultCodes": self.result_codes,
            "credentialOutage": withdrawn,
            "credentialOutageUntil": iso(self.credential_outage_until) if withdrawn else None,
        }


def _check_result_code(result: ResultIn | None, settings: Settings, field: str) -> None:
    if result is None or settings.result_codes is None:
        return
    if result.result_code not in settings.result_codes:
        allowed = ", ".join(settings.result_codes)
        raise ApiError.invalid([(field, f"Unknown result code; allowed: {allowed}")])


def _result_doc(result: ResultIn, completed_at: datetime) -> dict[str, Any]:
    return {**result.model_dump(by_alias=True), "completedAt": iso(completed_at)}


def _attempt_doc(user: uuid.UUID | None, attempt_at: datetime, now: datetime) -> dict[str, Any]:
    return {"userUuid": _text(user), "attemptAt": iso(attempt_at), "createdAt": iso(now)}


def _in_scope(conn: sqlite3.Connection, account: Account, call_uuid: str) -> StoredCall:
    call = store.get_call(conn, call_uuid)
    if call is None:
        raise ApiError(404, "Call is not found")
    if call.organization_uuid not in account.organization_uuids:
        raise ApiError(
            403, "Service account does not represent the organization of this call's person"
        )
    return call


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


def _update_stamp(conn: sqlite3.Connection, now: datetime) -> str:
    """The ``lastUpdatedAt`` of a change made at ``now`` (see the module's docstring)."""
    moment = to_ms(now)
    latest = store.latest_update(conn)
    if latest is not None:
        # Two changes in one millisecond, or a clock set back, still come out in order.
        moment = max(moment, parse_iso(latest) + _MILLISECOND)
    return iso(moment)


def create(
    settings: Settings, conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
) -> Outcome:
    """``POST /api/v1/calls``: create a call managed in TapRaise or externally."""
    body = parse_body(CreateCallIn, raw)
    problems = _management_problems(body)
    if problems:
        raise ApiError.invalid(problems)
    _check_result_code(body.result, settings, "result.resultCode")
    organization_uuid = _creator_scope(conn, account, body)
    call_uuid = str(body.uuid or uuid.uuid4())
    if store.get_call(conn, call_uuid) is not None:
        raise ApiError(409, "Call already exists")
    doc = _new_call_doc(body, call_uuid, now, _update_stamp(conn, now))
    external = body.external_metadata is not None
    requested_by = _text(body.requested_by_user_uuid)
    store.insert_call(conn, doc, organization_uuid, external, requested_by)
    store.count_effect(conn, call_uuid, "create")
    return 201, doc, call_uuid


def _management_problems(body: CreateCallIn) -> list[tuple[str, str]]:
    """What the body sends that its management mode (in TapRaise or external) does not allow."""
    problems: list[tuple[str, str]] = []
    if body.external_metadata is not None:
        if body.type is not None:
            problems.append(("type", "Not allowed for calls managed externally"))
        if body.status == "completed" and body.result is None:
            problems.append(("result", "Required when status is completed"))
        return problems
    if body.type is None:
        problems.append(("type", "Required for calls managed in TapRaise"))
    for field, value in (
        ("status", body.status),
        ("result", body.result),
        ("attempts", body.attempts),
        ("completedAt", body.completed_at),
        ("cancelledAt", body.cancelled_at),
    ):
        if value is not None:
            problems.append((field, "Not allowed for calls managed in TapRaise"))
    return problems


def _creator_scope(conn: sqlite3.Connection, account: Account, body: CreateCallIn) -> str:
    """The organization of the call's person, once the account may create calls for both."""
    person = store.get_person(conn, str(body.person_uuid))
    if person is None:
        raise ApiError.invalid([("personUuid", "Person does not exist")])
    organization_uuid: str = person["owningOrganizationUuid"]
    if organization_uuid not in account.organization_uuids:
        raise ApiError(403, "Service account may not create calls for this person")
    calling = body.calling_organization_uuid
    if calling is not None and str(calling) not in account.organization_uuids:
        raise ApiError(403, "Service account does not represent the calling organization")
    return organization_uuid


def _new_call_doc(
    body: CreateCallIn, call_uuid: str, now: datetime, updated_at: str
) -> dict[str, Any]:
    """The document of a new call, with TapRaise's defaults filled in."""
    status = body.status or "requested"
    attempts = [
        _attempt_doc(a.user_uuid, a.attempt_at or a.created_at or now, a.created_at or now)
        for a in body.attempts or []
    ]
    result = None
    if body.result is not None:
        result = _result_doc(body.result, body.result.completed_at or body.completed_at or now)
    completed_at = body.completed_at
    if completed_at is None and status == "completed" and result is not None:
        completed_at = parse_iso(result["completedAt"])
    cancelled_at = body.cancelled_at or (now if status == "cancelled" else None)
    meta = body.external_metadata
    return {
        "uuid": call_uuid,
        "status": status,
        "type": body.type or "verification",
        "requestedAt": iso(body.requested_at),
        "externalMetadata": None if meta is None else meta.model_dump(by_alias=True),
        "attempts": attempts,
        "attemptsCount": len(attempts),
        "result": result,
        "lastUpdatedAt": updated_at,
        "cancelledAt": iso(cancelled_at),
        "completedAt": iso(completed_at),
        "expiredAt": iso(now if status == "expired" else None),
        "notes": body.notes,
        "personUuid": str(body.person_uuid),
        "relatedCaseUuid": _text(body.related_case_uuid),
        "callingOrganizationUuid": _text(body.calling_organization_uuid),
    }


def _check_time(
    call: StoredCall,
    field: str,
    given: datetime | None,
    settings: Settings,
    now: datetime,
) -> datetime:
    """Return an action's timestamp (``given``, else now) once the domain rule allows it.

    The rule (calls managed in TapRaise only): not before the call's ``requestedAt``, and not
    further in the future than the clock skew allowed.
    """
    moment = to_ms(given or now)
    if call.managed_externally:
        return moment
    requested_at = parse_iso(call.doc["requestedAt"])
    # Name the default, so that a caller who sent no timestamp sees where it came from.
    shown = iso(moment) if given is not None else f"{iso(moment)} (the time of the request)"
    if moment < requested_at:
        message = f"Must not be before requestedAt {iso(requested_at)}; got {shown}"
        raise ApiError.invalid([(field, message)])
    # Compared in seconds: a clock skew of any size must not overflow a datetime.
    if (moment - now).total_seconds() > settings.clock_skew_seconds:
        message = (
            f"Must not be in the future; got {shown}, more than"
            f" {settings.clock_skew_seconds:g} s after the server time {iso(now)}"
        )
        raise ApiError.invalid([(field, message)])
    return moment


def _transition(call: StoredCall, target: str) -> None:
    """Refuse a status change: 409 when already there, 400 from another final status."""
    status = call.doc["status"]
    if status == target:
        raise ApiError(409, f"Call already {target}")
    if status in FINAL_STATUSES:
        raise ApiError(400, f"Call is {status}; only a requested call can become {target}")


def act(
    settings: Settings,
    action: str,
    call_uuid: str,
    conn: sqlite3.Connection,
    account: Account,
    raw: bytes,
    now: datetime,
) -> Outcome:
    """``PUT /api/v1/calls/{uuid}/actions/{action}``, for an action in ``ACTION_BODIES``: change
    a call's state."""
    body = parse_body(ACTION_BODIES[action], raw, empty_ok=True)
    checked = _path_uuid(call_uuid)
    call = _in_scope(conn, account, checked)
    doc = _change(conn, settings, call, body, now)
    store.count_effect(conn, checked, action)
    return 200, doc, checked


def act_in_app(
    settings: Settings,
    action: str,
    call_uuid: str,
    conn: sqlite3.Connection,
    raw: bytes,
    now: datetime,
) -> Outcome:
    """Change a call's state as a user of the TapRaise app does, for an action in
    ``APP_ACTION_BODIES``.

    The API's rules apply (transitions, times, the maximum of attempts, result codes, the same
    status codes), but no service account's scope: the app's user sees every call. A call
    managed externally cannot be changed in the app (400). The change is not counted among the
    API's effects.
    """
    body = parse_body(APP_ACTION_BODIES[action], raw, empty_ok=True)
    checked = _path_uuid(call_uuid)
    call = store.get_call(conn, checked)
    if call is None:
        raise ApiError(404, "Call is not found")
    if call.managed_externally:
        raise ApiError(400, "Call is managed externally; it cannot be changed in the app")
    return 200, _change(conn, settings, call, body, now), checked


def request_in_app(conn: sqlite3.Connection, raw: bytes, now: datetime) -> Outcome:
    """Create a call as a user of the TapRaise app requests one: managed in TapRaise.

    The call is ``requested``, has no external metadata and is held to the domain rules, as one
    the API creates without ``externalMetadata``. The person must exist (400), and so must the
    calling organization when one is named (400); a uuid already taken is a 409. Not counted
    among the API's effects.
    """
    body = parse_body(AppCallIn, raw)
    person = store.get_person(conn, str(body.person_uuid))
    if person is None:
        raise ApiError.invalid([("personUuid", "Person does not exist")])
    calling = body.calling_organization_uuid
    if calling is not None and store.get_organization(conn, str(calling)) is None:
        raise ApiError.invalid([("callingOrganizationUuid", "Organization does not exist")])
    call_uuid = str(body.uuid or uuid.uuid4())
    if store.get_call(conn, call_uuid) is not None:
        raise ApiError(409, "Call already exists")
    # The API's create body of the same call, so that both make their documents alike.
    as_created = CreateCallIn.model_validate(
        {**body.model_dump(by_alias=True), "requestedAt": body.requested_at or to_ms(now)}
    )
    doc = _new_call_doc(as_created, call_uuid, now, _update_stamp(conn, now))
    requested_by = str(body.requested_by_user_uuid)
    store.insert_call(conn, doc, person["owningOrganizationUuid"], False, requested_by)
    return 201, doc, call_uuid


def _path_uuid(call_uuid: str) -> str:
    """The call uuid of an action's path, once it is a version-4 UUID (else 400)."""
    checked = _uuid4_or_none(call_uuid)
    if checked is None:
        raise ApiError.invalid([("uuid", "Must be a version-4 UUID")])
    return checked


def _change(
    conn: sqlite3.Connection,
    settings: Settings,
    call: StoredCall,
    body: AddAttemptIn | CompleteIn | CancelIn | ExpireIn,
    now: datetime,
) -> dict[str, Any]:
    """Apply an action's body to a call under TapRaise's rules, store it and return its
    document."""
    doc = call.doc
    completed_by: str | None = None
    if isinstance(body, AddAttemptIn):
        _add_attempt(conn, call, body, settings, now)
    elif isinstance(body, CompleteIn):
        _transition(call, "completed")
        _check_result_code(body.result, settings, "result.resultCode")
        completed_at = _check_time(
            call, "result.completedAt", body.result.completed_at, settings, now
        )
        doc.update(status="completed", result=_result_doc(body.result, completed_at))
        doc["completedAt"] = iso(completed_at)
        completed_by = _text(body.user_uuid)
    elif isinstance(body, CancelIn):
        _transition(call, "cancelled")
        cancelled_at = _check_time(call, "cancelledAt", body.cancelled_at, settings, now)
        doc.update(status="cancelled", cancelledAt=iso(cancelled_at))
    else:
        _transition(call, "expired")
        expired_at = _check_time(call, "expiredAt", body.expired_at, settings, now)
        doc.update(status="expired", expiredAt=iso(expired_at))
    doc["lastUpdatedAt"] = _update_stamp(conn, now)
    store.update_call(conn, doc, completed_by)
    return doc


def _uuid4_or_none(text: str) -> str | None:
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    return str(value) if value.version == 4 else None


def _add_attempt(
    conn: sqlite3.Connection,
    call: StoredCall,
    body: AddAttemptIn,
    settings: Settings,
    now: datetime,
) -> None:
    """Add an attempt to a requested call, within the owning organization's maximum."""
    doc = call.doc
    if doc["status"] in FINAL_STATUSES:
        raise ApiError(400, f"Call is {doc['status']}; attempts can only be added when requested")
    if not call.managed_externally:
        org = store.get_organization(conn, call.organization_uuid)
        maximum = 0 if org is None else int(org["maxCallAttempts"])
        if doc["attemptsCount"] >= maximum:
            raise ApiError(
                400, f"Call already has {doc['attemptsCount']} attempts, the maximum of {maximum}"
            )
    attempt_at = _check_time(call, "attemptAt", body.attempt_at, settings, now)
    doc["attempts"].append(_attempt_doc(body.user_uuid, attempt_at, now))
    doc["attemptsCount"] = len(doc["attempts"])


def mark_processed(
    conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
) -> Outcome:
    """``POST /api/v1/entity-access/actions/mark-processed``: 204, or 400 listing the entries
    that failed.

    Calls and persons must exist in the account's scope; pledges and transactions are not
    modelled by the sandbox, so any uuid of theirs is accepted.
    """
    body = parse_body(MarkProcessedIn, raw)
    failed: list[dict[str, Any]] = []
    for entry in body.entries:
        name, entity_uuid = entry.entity_name, str(entry.entity_uuid)
        organization: str | None = "*"
        if name == "call":
            call = store.get_call(conn, entity_uuid)
            organization = None if call is None else call.organization_uuid
        elif name == "person":
            person = store.get_person(conn, entity_uuid)
            organization = None if person is None else person["owningOrganizationUuid"]
        if organization is None or (
            organization != "*" and organization not in account.organization_uuids
        ):
            failed.append(
                {"entityName": name, "entityUuid": entity_uuid, "message": f"{name} not found"}
            )
            continue
        marked = entry.model_dump(by_alias=True, mode="json")
        marked["processedAt"] = iso(entry.processed_at)
        store.put_mark(conn, account.email, marked, iso(now) or "")
    if failed:
        # Answered, not raised: the other entries stay marked and only the failures are listed.
        message = f"{len(failed)} of {len(body.entries)} entries were not marked"
        return 400, ApiError(400, message, failed).body(), None
    return 204, None, None


def call_filter(account: Account, query: dict[str, str]) -> CallFilter:
    """Validate the list filters of ``GET /api/v1/calls``."""
    problems: list[tuple[str, str]] = []
    times: dict[str, str | None] = {}
    for name in ("requestedAfter", "updatedAfter"):
        raw = query.get(name)
        times[name] = None
        if raw is None:
            continue
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            message = "Must be an ISO-8601 datetime"
            if " " in raw:
                # A "+" left unescaped in a query string arrives as a space.
                message += "; a '+' in a query string is sent as %2B"
            problems.append((name, message))
            continue
        if moment.tzinfo is None or moment.utcoffset() is None:
            problems.append((name, "Must include a time zone"))
            continue
        try:
            # At TapRaise's precision: "after 12:00:00.0005" is "after 12:00:00.000", since
            # stored times are whole milliseconds.
            times[name] = iso(moment)
        except ValueError as exc:
            problems.append((name, str(exc)))
    app, ref = query.get("externalApplicationName"), query.get("externalReferenceId")
    if (app is None) != (ref is None):
        problems.append(
            ("externalReferenceId" if ref is None else "externalApplicationName",
             "externalApplicationName and externalReferenceId go together")
        )  # fmt: skip
    if problems:
        raise ApiError.invalid(problems)
    # The literal "null" finds calls without an external reference.
    return CallFilter(
        organization_uuids=account.organization_uuids,
        requested_after=times["requestedAfter"],
        updated_after=times["updatedAfter"],
        application_name=None if app == "null" else app,
        reference_id=None if ref == "null" else ref,
        match_external=app is not None,
    )


def list_calls(
    query: dict[str, str], conn: sqlite3.Connection, account: Account, raw: bytes, now: datetime
) -> Outcome:
    """``GET /api/v1/calls`` with its query parameters."""
    problems: list[tuple[str, str]] = []
    first, last = _page_size(query, "first", problems), _page_size(query, "last", problems)
    if "first" in query and "last" in query:
        problems.append(("last", "first and last cannot be combined"))
    if "after" in query and "before" in query:
        problems.append(("before", "after and before cannot be combined"))
    keys = {name: _cursor_key(query, name, problems) for name in ("after", "before")}
    if problems:
        raise ApiError.invalid(problems)
    flt = call_filter(account, query)
    # "before" alone pages backward, like "last": the page just before the cursor.
    backward = last is not None or (first is None and keys["before"] is not None)
    items, has_previous, has_next = store.page_calls(
        conn,
        flt,
        count=last or first or DEFAULT_PAGE_SIZE,
        backward=backward,
        after=keys["after"],
        before=keys["before"],
    )
    edges = [{"node": doc, "cursor": cursor} for cursor, doc in items]
    page_info = {
        "startCursor": edges[0]["cursor"] if edges else None,
        "endCursor": edges[-1]["cursor"] if edges else None,
        "hasPreviousPage": has_previous,
        "hasNextPage": has_next,
    }
    return 200, {"edges": edges, "pageInfo": page_info}, None


def _page_size(query: dict[str, str], name: str, problems: list[tuple[str, str]]) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    # ASCII digits only: str.isdigit also accepts other scripts' digits and superscripts.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        problems.append((name, f"Must be an integer from 1 to {MAX_PAGE_SIZE}"))
        return None
    return int(raw)


def _cursor_key(
    query: dict[str, str], name: str, problems: list[tuple[str, str]]
) -> tuple[str, int] | None:
    cursor = query.get(name)
    key = None if cursor is None else store.decode_cursor(cursor)
    if cursor is not None and key is None:
        problems.append((name, "Invalid cursor"))
    return key
