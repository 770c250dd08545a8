"""The sandbox's persistent state: one SQLite file in WAL mode.

A single connection guarded by a lock serves every request; each change runs inside one
``BEGIN IMMEDIATE`` transaction, so concurrent requests never interleave half-done changes and a
restart finds everything that was answered.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel, to_snake

_SCHEMA = """
CREATE TABLE IF NOT EXISTS organizations (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    max_call_attempts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS persons (
    uuid TEXT PRIMARY KEY,
    first_name TEXT,
    last_name TEXT,
    phone_number TEXT,
    organization_uuid TEXT NOT NULL REFERENCES organizations(uuid)
);
CREATE TABLE IF NOT EXISTS service_accounts (
    email TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    public_key_pem TEXT NOT NULL,
    organization_uuids TEXT NOT NULL,
    actions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    organization_uuid TEXT NOT NULL,
    status TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    last_updated_at TEXT NOT NULL,
    external_application_name TEXT,
    external_reference_id TEXT,
    managed_externally INTEGER NOT NULL,
    requested_by_user_uuid TEXT,
    completed_by_user_uuid TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_order ON calls (requested_at DESC, seq DESC);
CREATE INDEX IF NOT EXISTS calls_updated ON calls (last_updated_at);
CREATE TABLE IF NOT EXISTS effects (
    call_uuid TEXT NOT NULL,
    action TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (call_uuid, action)
);
CREATE TABLE IF NOT EXISTS marks (
    account_email TEXT NOT NULL,
    entity_name TEXT NOT NULL,
    entity_uuid TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    consumer_identifier TEXT,
    external_source_name TEXT,
    marked_at TEXT NOT NULL,
    PRIMARY KEY (account_email, entity_name, entity_uuid)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    call_uuid TEXT,
    status INTEGER NOT NULL,
    request_body TEXT,
    fault TEXT,
    account_email TEXT
);
CREATE INDEX IF NOT EXISTS requests_call ON requests (call_uuid);
"""

EFFECT_ACTIONS: tuple[str, ...] = ("create", "add-attempt", "complete", "cancel", "expire")
APP_ENDPOINT_PREFIX = "app:"
"""Marks a request-log entry as a change made in the TapRaise app (``app:complete``), not an API
request of a service account."""


@dataclass(frozen=True)
class Account:
    """A service account: who it is, what it represents, what it may do."""

    email: str
    key_id: str
    public_key_pem: str
    organization_uuids: frozenset[str]
    actions: frozenset[str]


@dataclass(frozen=True)
class StoredCall:
    """A call row: the API document plus what the API does not show."""

    seq: int
    organization_uuid: str
    managed_externally: bool
    doc: dict[str, Any]


class Store:
    """Owns the SQLite connection and hands out transactions."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only before SQLite opens it: SQLite would make it 0644 less the umask,
        # and it gives the -wal and -shm files the database file's own mode.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.fchmod(descriptor, 0o600)
        finally:
            os.close(descriptor)
        # One shared connection: the lock serialises access; autocommit lets us BEGIN ourselves.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one immediate transaction; roll back if it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")


# --- rows in and out --------------------------------------------------------------------------


def _insert(
    conn: sqlite3.Connection, table: str, values: Mapping[str, Any], verb: str = "INSERT"
) -> None:
    """Insert one row, its values named by column (camelCase names become snake_case)."""
    columns = ", ".join(to_snake(name) for name in values)
    sql = f"{verb} INTO {table} ({columns}) VALUES ({', '.join('?' * len(values))})"
    conn.execute(sql, tuple(values.values()))


def _json(row: sqlite3.Row) -> dict[str, Any]:
    """A row as JSON: its columns in order, under their camelCase names."""
    return {to_camel(column): row[column] for column in row.keys()}


def _json_row(conn: sqlite3.Connection, sql: str, *params: Any) -> dict[str, Any] | None:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else _json(row)


# --- organizations, persons, accounts -------------------------------------------------------


def get_organization(conn: sqlite3.Connection, uuid: str) -> dict[str, Any] | None:
    """An organization as JSON (``uuid``, ``name``, ``maxCallAttempts``), or None."""
    return _json_row(conn, "SELECT * FROM organizations WHERE uuid = ?", uuid)


def get_person(conn: sqlite3.Connection, uuid: str) -> dict[str, Any] | None:
    """A person as JSON (names, ``phoneNumber``, ``owningOrganizationUuid``), or None."""
    return _json_row(
        conn,
        "SELECT uuid, first_name, last_name, phone_number,"
        " organization_uuid AS owning_organization_uuid FROM persons WHERE uuid = ?",
        uuid,
    )


def add_organization(conn: sqlite3.Connection, uuid: str, name: str, max_attempts: int) -> bool:
    """Insert an organization; False when the uuid exists."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO organizations VALUES (?, ?, ?)", (uuid, name, max_attempts)
    )
    return cur.rowcount == 1


def update_organization(
    conn: sqlite3.Connection, uuid: str, name: str | None, max_attempts: int | None
) -> None:
    """Change an organization's name and/or maximum attempts (None keeps them)."""
    conn.execute(
        "UPDATE organizations SET name = COALESCE(?, name),"
        " max_call_attempts = COALESCE(?, max_call_attempts) WHERE uuid = ?",
        (name, max_attempts, uuid),
    )


def add_person(
    conn: sqlite3.Connection,
    uuid: str,
    first_name: str | None,
    last_name: str | None,
    phone_number: str | None,
    organization_uuid: str,
) -> bool:
    """Insert a person; False when the uuid exists."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO persons VALUES (?, ?, ?, ?, ?)",
        (uuid, first_name, last_name, phone_number, organization_uuid),
    )
    return cur.rowcount == 1


# The account's sets, stored as JSON lists.
_ACCOUNT_SETS = ("organization_uuids", "actions")


def put_account(conn: sqlite3.Connection, account: Account) -> None:
    """Insert or replace a service account (a new key replaces the old one)."""
    sets = {name: json.dumps(sorted(getattr(account, name))) for name in _ACCOUNT_SETS}
    _insert(conn, "service_accounts", asdict(account) | sets, "INSERT OR REPLACE")


def account_by_key_id(conn: sqlite3.Connection, key_id: str) -> Account | None:
    """Return the account a key id belongs to, or None."""
    row = conn.execute("SELECT * FROM service_accounts WHERE key_id = ?", (key_id,)).fetchone()
    if row is None:
        return None
    sets = {name: frozenset(json.loads(row[name])) for name in _ACCOUNT_SETS}
    return Account(**(dict(row) | sets))


# --- calls ----------------------------------------------------------------------------------


def _stored_call(row: sqlite3.Row) -> StoredCall:
    return StoredCall(
        seq=row["seq"],
        organization_uuid=row["organization_uuid"],
        managed_externally=bool(row["managed_externally"]),
        doc=json.loads(row["doc"]),
    )


def get_call(conn: sqlite3.Connection, uuid: str) -> StoredCall | None:
    """Return a stored call or None."""
    row = conn.execute("SELECT * FROM calls WHERE uuid = ?", (uuid,)).fetchone()
    return None if row is None else _stored_call(row)


def insert_call(
    conn: sqlite3.Connection,
    doc: dict[str, Any],
    organization_uuid: str,
    managed_externally: bool,
    requested_by_user_uuid: str | None,
) -> None:
    """Insert a new call document."""
    meta = doc["externalMetadata"] or {}
    row = {key: doc[key] for key in ("uuid", "status", "requestedAt", "lastUpdatedAt")}
    row.update(
        organizationUuid=organization_uuid,
        externalApplicationName=meta.get("applicationName"),
        externalReferenceId=meta.get("referenceId"),
        managedExternally=int(managed_externally),
        requestedByUserUuid=requested_by_user_uuid,
        doc=json.dumps(doc),
    )
    _insert(conn, "calls", row)


def update_call(
    conn: sqlite3.Connection, doc: dict[str, Any], completed_by_user_uuid: str | None = None
) -> None:
    """Write back a changed call document."""
    conn.execute(
        "UPDATE calls SET status = ?, last_updated_at = ?, doc = ?,"
        " completed_by_user_uuid = COALESCE(?, completed_by_user_uuid) WHERE uuid = ?",
        (doc["status"], doc["lastUpdatedAt"], json.dumps(doc), completed_by_user_uuid, doc["uuid"]),
    )


def latest_update(conn: sqlite3.Connection) -> str | None:
    """The greatest ``lastUpdatedAt`` any call has been given, or None before the first call."""
    row = conn.execute("SELECT MAX(last_updated_at) FROM calls").fetchone()
    latest: str | None = row[0]
    return latest


def count_effect(conn: sqlite3.Connection, call_uuid: str, action: str) -> None:
    """Count one state change of ``action`` a service account applied to a call through the
    API (changes made in the app are not counted: tests assert the API's exactly-once effects)."""
    conn.execute(
        "INSERT INTO effects VALUES (?, ?, 1)"
        " ON CONFLICT (call_uuid, action) DO UPDATE SET count = count + 1",
        (call_uuid, action),
    )


def _counted(keys: Iterable[str], rows: Iterable[sqlite3.Row]) -> dict[str, int]:
    """A count for each key (zero unless a ``(key, count)`` row gives one), then other keys."""
    return dict.fromkeys(keys, 0) | {key: count for key, count in rows}


def effects(conn: sqlite3.Connection, call_uuid: str) -> dict[str, int]:
    """Return how many state changes of each action the API applied to a call."""
    rows = conn.execute("SELECT action, count FROM effects WHERE call_uuid = ?", (call_uuid,))
    return _counted(EFFECT_ACTIONS, rows)


@dataclass(frozen=True)
class CallFilter:
    """The list filters, already validated (timestamps in storage format)."""

    organization_uuids: frozenset[str]
    requested_after: str | None = None
    updated_after: str | None = None
    application_name: str | None = None
    reference_id: str | None = None
    match_external: bool = False


_CURSOR = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)~(\d+)$")


def encode_cursor(requested_at: str, seq: int) -> str:
    """Make an opaque cursor from a call's sort key."""
    return base64.urlsafe_b64encode(f"{requested_at}~{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, int] | None:
    """Return the sort key inside a cursor, or None when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError:
        return None
    match = _CURSOR.match(text)
    return None if match is None else (match.group(1), int(match.group(2)))


def _where(flt: CallFilter) -> tuple[list[str], list[Any]]:
    orgs = sorted(flt.organization_uuids)
    clauses = [f"organization_uuid IN ({','.join('?' * len(orgs))})"]
    params: list[Any] = list(orgs)
    if flt.requested_after is not None:
        clauses.append("requested_at > ?")
        params.append(flt.requested_after)
    if flt.updated_after is not None:
        clauses.append("last_updated_at > ?")
        params.append(flt.updated_after)
    if flt.match_external:
        for column, value in (
            ("external_application_name", flt.application_name),
            ("external_reference_id", flt.reference_id),
        ):
            if value is None:
                clauses.append(f"{column} IS NULL")
            else:
                clauses.append(f"{column} = ?")
                params.append(value)
    return clauses, params


def _exists(
    conn: sqlite3.Connection, flt: CallFilter, condition: str, key: tuple[str, int]
) -> bool:
    clauses, params = _where(flt)
    sql = f"SELECT 1 FROM calls WHERE {' AND '.join([*clauses, condition])} LIMIT 1"
    return conn.execute(sql, [*params, *key]).fetchone() is not None


def page_calls(
    conn: sqlite3.Connection,
    flt: CallFilter,
    *,
    count: int,
    backward: bool,
    after: tuple[str, int] | None,
    before: tuple[str, int] | None,
) -> tuple[list[tuple[str, dict[str, Any]]], bool, bool]:
    """Return one page of calls, newest first, with hasPreviousPage and hasNextPage.

    The window is the filtered set after ``after`` / before ``before``; ``backward`` takes its
    last ``count`` items instead of its first.
    """
    clauses, params = _where(flt)
    # Sorted by (requested_at, seq) descending, so "after" means a smaller key.
    if after is not None:
        clauses.append("(requested_at, seq) < (?, ?)")
        params.extend(after)
    if before is not None:
        clauses.append("(requested_at, seq) > (?, ?)")
        params.extend(before)
    direction = "ASC" if backward else "DESC"
    rows = conn.execute(
        f"SELECT seq, requested_at, doc FROM calls WHERE {' AND '.join(clauses)}"
        f" ORDER BY requested_at {direction}, seq {direction} LIMIT ?",
        [*params, count],
    ).fetchall()
    if backward:
        rows.reverse()
    items = [(encode_cursor(r["requested_at"], r["seq"]), json.loads(r["doc"])) for r in rows]
    if rows:
        first = (rows[0]["requested_at"], rows[0]["seq"])
        last = (rows[-1]["requested_at"], rows[-1]["seq"])
        has_previous = _exists(conn, flt, "(requested_at, seq) > (?, ?)", first)
        has_next = _exists(conn, flt, "(requested_at, seq) < (?, ?)", last)
    else:
        has_previous = after is not None and _exists(
            conn, flt, "(requested_at, seq) >= (?, ?)", after
        )
        has_next = before is not None and _exists(
            conn, flt, "(requested_at, seq) <= (?, ?)", before
        )
    return items, has_previous, has_next


# --- marks ------------------------------------------------------------------------------------


def put_mark(
    conn: sqlite3.Connection, account_email: str, entry: dict[str, Any], marked_at: str
) -> None:
    """Record (or refresh) that an account processed an entity (``entry``: its camelCase
    fields)."""
    row = {"accountEmail": account_email, **entry, "markedAt": marked_at}
    _insert(conn, "marks", row, "INSERT OR REPLACE")


def marks(
    conn: sqlite3.Connection, entity_name: str | None = None, entity_uuid: str | None = None
) -> list[dict[str, Any]]:
    """Return the marks (every one, or those of one entity name and/or uuid), oldest first."""
    clauses, params = _equal((("entity_name", entity_name), ("entity_uuid", entity_uuid)))
    rows = conn.execute(f"SELECT * FROM marks {clauses} ORDER BY marked_at, rowid", params)
    return [_json(r) for r in rows]


# --- request log ------------------------------------------------------------------------------


def log_request(conn: sqlite3.Connection, entry: dict[str, Any]) -> None:
    """Append one received API request to the log (``entry``: its camelCase fields)."""
    _insert(conn, "requests", entry)


def _body(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _equal(pairs: Iterable[tuple[str, str | None]]) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (or nothing) asking each column given a value to equal it."""
    given = [(column, value) for column, value in pairs if value is not None]
    if not given:
        return "", []
    return "WHERE " + " AND ".join(f"{column} = ?" for column, _ in given), [v for _, v in given]


def requests(
    conn: sqlite3.Connection, call_uuid: str | None, endpoint: str | None, limit: int
) -> list[dict[str, Any]]:
    """Return the most recent ``limit`` logged requests matching the filters, oldest first."""
    where, params = _equal((("call_uuid", call_uuid), ("endpoint", endpoint)))
    rows = conn.execute(
        f"SELECT * FROM requests {where} ORDER BY id DESC LIMIT ?", [*params, limit]
    ).fetchall()
    return [{**_json(r), "requestBody": _body(r["request_body"])} for r in reversed(rows)]


def stats(conn: sqlite3.Connection) -> dict[str, Any]:
    """Return totals over calls, API requests, changes made in the app, injected faults and
    applied effects."""
    statuses = conn.execute("SELECT status, COUNT(*) FROM calls GROUP BY status")
    by_status = _counted(("requested", "completed", "cancelled", "expired"), statuses)
    # The app's changes are counted apart: "requests" are what service accounts sent.
    per_endpoint: dict[str, dict[str, int]] = {}
    per_app_action: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        "SELECT endpoint, status, COUNT(*) AS n FROM requests GROUP BY endpoint, status"
    ):
        endpoint: str = row["endpoint"]
        counts = per_app_action if endpoint.startswith(APP_ENDPOINT_PREFIX) else per_endpoint
        counts.setdefault(endpoint, {})[str(row["status"])] = row["n"]
    faults = {
        row["fault"]: row["n"]
        for row in conn.execute(
            "SELECT fault, COUNT(*) AS n FROM requests WHERE fault IS NOT NULL GROUP BY fault"
        )
    }
    applied = conn.execute("SELECT action, SUM(count) FROM effects GROUP BY action")
    return {
        "calls": {"total": sum(by_status.values()), "byStatus": by_status},
        "requests": {
            "total": sum(sum(v.values()) for v in per_endpoint.values()),
            "byEndpoint": per_endpoint,
        },
        "appActions": {
            "total": sum(sum(v.values()) for v in per_app_action.values()),
            "byEndpoint": per_app_action,
        },
        "faults": faults,
        "effects": _counted(EFFECT_ACTIONS, applied),
    }


def seed(
    conn: sqlite3.Connection,
    organizations: Iterable[tuple[str, str, int]],
    persons: Iterable[tuple[str, str, str, str, str]],
) -> None:
    """Insert the demo organizations and persons that are missing."""
    for org in organizations:
        add_organization(conn, *org)
    for person in persons:
        add_person(conn, *person)
