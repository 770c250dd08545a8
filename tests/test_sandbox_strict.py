"""The sandbox is at least as strict as TapRaise's published rules, to the millisecond.

List filters at their exact boundaries, every combination of page size and cursor checked
against a model of the documented pagination, the time rules of every action, the late_apply
fault, the credential outage and a lowered maximum of attempts. Everything goes over real HTTP
to the sandbox process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from sandbox.seed import ALL_ACTIONS
from tests.sandbox_fixture import SandboxServer
from tests.test_sandbox import assert_error, client_for, iso, put, sign

pytestmark = pytest.mark.timeout(60)

MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Tenant:
    """An organization of its own with one person and an account that may do everything."""

    organization_uuid: str
    person_uuid: str
    email: str
    key_id: str
    key_pem: str

    def client(self, sandbox: SandboxServer, timeout: float = 10) -> httpx.Client:
        token = sign(sandbox, email=self.email, kid=self.key_id, key_pem=self.key_pem,
                     lifetime=3600)  # fmt: skip
        return client_for(sandbox, token, timeout)


def add_tenant(sandbox: SandboxServer, label: str, max_call_attempts: int = 5) -> Tenant:
    org = sandbox.add_organization(f"{label} {uuid.uuid4()}", max_call_attempts)
    person = sandbox.add_person(org["uuid"], first_name=label)
    email = f"{label}-{uuid.uuid4().hex[:8]}@example.org"
    creds = sandbox.add_service_account(email, [org["uuid"]], list(ALL_ACTIONS))
    return Tenant(org["uuid"], person["uuid"], email, creds["privateKeyId"], creds["privateKey"])


def create(client: httpx.Client, person: str, requested_at: str, **fields: Any) -> dict[str, Any]:
    body = {"uuid": str(uuid.uuid4()), "requestedAt": requested_at, "personUuid": person, **fields}
    if "externalMetadata" not in body:
        body.setdefault("type", "verification")
    response = client.post("/calls", json=body)
    assert response.status_code == 201, response.text
    call: dict[str, Any] = response.json()
    return call


def uuids(client: httpx.Client, **params: Any) -> list[str]:
    """Every call the filters select, newest first (the sets here fit one page of 100)."""
    page = client.get("/calls", params={"first": 100, **params})
    assert page.status_code == 200, page.text
    assert not page.json()["pageInfo"]["hasNextPage"]
    return [edge["node"]["uuid"] for edge in page.json()["edges"]]


# --- list filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filtered:
    """A tenant's calls: three share one instant, with neighbours one millisecond either side."""

    client: httpx.Client
    instant: datetime
    before: dict[str, Any]
    same: list[dict[str, Any]]
    after: dict[str, Any]
    external: dict[str, Any]


@pytest.fixture(scope="module")
def filtered(sandbox: SandboxServer) -> Iterator[Filtered]:
    tenant = add_tenant(sandbox, "filters")
    instant = datetime.now(UTC).replace(microsecond=123000) - timedelta(days=2)
    with tenant.client(sandbox) as client:
        before = create(client, tenant.person_uuid, iso(instant - MS))
        same = [create(client, tenant.person_uuid, iso(instant)) for _ in range(3)]
        after = create(client, tenant.person_uuid, iso(instant + MS))
        external = create(
            client,
            tenant.person_uuid,
            iso(instant + timedelta(hours=1)),
            externalMetadata={"applicationName": "crm", "referenceId": "R-1"},
        )
        yield Filtered(client, instant, before, same, after, external)


def test_requested_after_is_exclusive_to_the_millisecond(filtered: Filtered) -> None:
    same = {call["uuid"] for call in filtered.same}
    at = uuids(filtered.client, requestedAfter=iso(filtered.instant))
    assert set(at) == {filtered.after["uuid"], filtered.external["uuid"]}
    just_before = uuids(filtered.client, requestedAfter=iso(filtered.instant - MS))
    assert set(just_before) == same | set(at)
    everything = uuids(filtered.client, requestedAfter=iso(filtered.instant - 2 * MS))
    assert set(everything) == set(just_before) | {filtered.before["uuid"]}


def test_requested_after_below_a_millisecond_and_in_another_zone(filtered: Filtered) -> None:
    same = {call["uuid"] for call in filtered.same}
    later = {filtered.after["uuid"], filtered.external["uuid"]}
    zone = timezone(timedelta(hours=2))
    half_before = (filtered.instant - MS / 2).astimezone(zone).isoformat()
    half_after = (filtered.instant + MS / 2).astimezone(zone).isoformat()
    assert "+02:00" in half_before and half_before.count(".") == 1
    assert set(uuids(filtered.client, requestedAfter=half_before)) == same | later
    assert set(uuids(filtered.client, requestedAfter=half_after)) == later


def test_updated_after_is_exclusive_and_combines_with_requested_after(
    filtered: Filtered,
) -> None:
    # A call of its own, changed now: its lastUpdatedAt is the only one this late.
    changed = put(filtered.client, filtered.same[0]["uuid"], "add-attempt").json()
    updated = datetime.fromisoformat(changed["lastUpdatedAt"])
    assert changed["uuid"] not in uuids(filtered.client, updatedAfter=iso(updated))
    assert changed["uuid"] in uuids(filtered.client, updatedAfter=iso(updated - MS))
    # Together: changed since, and requested after the instant (which the changed one is not).
    both = {"updatedAfter": iso(updated - MS), "requestedAfter": iso(filtered.instant)}
    assert uuids(filtered.client, **both) == []
    both["requestedAfter"] = iso(filtered.instant - MS)
    assert uuids(filtered.client, **both) == [changed["uuid"]]


def test_external_reference_filter_and_the_null_literal(filtered: Filtered) -> None:
    found = uuids(filtered.client, externalApplicationName="crm", externalReferenceId="R-1")
    assert found == [filtered.external["uuid"]]
    assert uuids(filtered.client, externalApplicationName="crm", externalReferenceId="R-2") == []
    managed = uuids(filtered.client, externalApplicationName="null", externalReferenceId="null")
    assert filtered.external["uuid"] not in managed and len(managed) == 5
    # Combined with requestedAfter, like every filter.
    assert uuids(
        filtered.client,
        externalApplicationName="null",
        externalReferenceId="null",
        requestedAfter=iso(filtered.instant),
    ) == [filtered.after["uuid"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"requestedAfter": "0001-01-01T00:00:00+01:00"}, "requestedAfter"),
        ({"updatedAfter": "2025-01-01"}, "updatedAfter"),
        ({"first": "\N{SUPERSCRIPT TWO}"}, "first"),
        ({"last": "\N{ARABIC-INDIC DIGIT FIVE}"}, "last"),
        ({"first": "-1"}, "first"),
        ({"externalReferenceId": "null"}, "externalApplicationName"),
    ],
)
def test_malformed_list_parameters_are_400(
    filtered: Filtered, params: dict[str, str], field: str
) -> None:
    assert_error(filtered.client.get("/calls", params=params), 400, field)


# --- pagination against a model of the documented rules -------------------------------------------


@dataclass(frozen=True)
class Paged:
    """A tenant's 23 calls (ties in threes, created shuffled), newest first, with cursors."""

    client: httpx.Client
    order: list[str]
    cursors: dict[str, str]
    requested: dict[str, str]


@pytest.fixture(scope="module")
def paged(sandbox: SandboxServer) -> Iterator[Paged]:
    tenant = add_tenant(sandbox, "paging")
    base = datetime.now(UTC) - timedelta(days=3)
    times = [iso(base + timedelta(minutes=i // 3)) for i in range(23)]
    shuffled = sorted(range(23), key=lambda i: (i * 7) % 23)
    with tenant.client(sandbox) as client:
        requested = {}
        for i in shuffled:
            requested[create(client, tenant.person_uuid, times[i])["uuid"]] = times[i]
        page = client.get("/calls", params={"first": 100}).json()
        order = [edge["node"]["uuid"] for edge in page["edges"]]
        cursors = {edge["node"]["uuid"]: edge["cursor"] for edge in page["edges"]}
        yield Paged(client, order, cursors, requested)


def model(
    order: list[str], members: list[str], params: dict[str, Any], cursors: dict[str, str]
) -> dict[str, Any]:
    """The page TapRaise's rules give for ``params`` over ``members`` (a subset of ``order``).

    ``first``/``after`` page forward, ``last``/``before`` backward; a cursor excludes its own
    call; ``first`` alone is the start of the set and ``last`` alone its end; ``before``
    without a size pages backward; the default size is 10. ``hasPreviousPage`` says whether
    the set holds calls before the page, ``hasNextPage`` whether it holds calls after it (for
    an empty page: before the ``after`` cursor, after the ``before`` cursor).
    """
    rank = {call: i for i, call in enumerate(order)}
    by_cursor = {cursor: call for call, cursor in cursors.items()}
    window = list(members)
    after = by_cursor.get(params.get("after", ""))
    before = by_cursor.get(params.get("before", ""))
    if after is not None:
        window = [c for c in window if rank[c] > rank[after]]
    if before is not None:
        window = [c for c in window if rank[c] < rank[before]]
    if "first" in params:
        page = window[: params["first"]]
    elif "last" in params:
        page = window[-params["last"] :]
    elif before is not None:
        page = window[-10:]
    else:
        page = window[:10]
    ranks = [rank[c] for c in members]
    if page:
        has_previous = any(r < rank[page[0]] for r in ranks)
        has_next = any(r > rank[page[-1]] for r in ranks)
    else:
        has_previous = after is not None and any(r <= rank[after] for r in ranks)
        has_next = before is not None and any(r >= rank[before] for r in ranks)
    return {
        "uuids": page,
        "pageInfo": {
            "startCursor": cursors[page[0]] if page else None,
            "endCursor": cursors[page[-1]] if page else None,
            "hasPreviousPage": has_previous,
            "hasNextPage": has_next,
        },
    }


def combinations(members: list[str], cursors: dict[str, str]) -> list[dict[str, Any]]:
    sizes: list[dict[str, Any]] = [{}, {"first": 1}, {"first": 4}, {"first": 100},
                                   {"last": 1}, {"last": 4}, {"last": 100}]  # fmt: skip
    marks = sorted({0, 1, len(members) // 2, len(members) - 2, len(members) - 1})
    positions: list[dict[str, Any]] = [{}]
    for i in marks:
        if 0 <= i < len(members):
            positions += [{"after": cursors[members[i]]}, {"before": cursors[members[i]]}]
    return [{**size, **position} for size in sizes for position in positions]


def check_against_model(
    paged: Paged, members: list[str], filters: dict[str, str], cursors: dict[str, str]
) -> int:
    checked = 0
    for params in combinations(members, cursors):
        response = paged.client.get("/calls", params={**filters, **params})
        assert response.status_code == 200, (params, response.text)
        body = response.json()
        got = {"uuids": [e["node"]["uuid"] for e in body["edges"]], "pageInfo": body["pageInfo"]}
        assert got == model(paged.order, members, params, cursors), params
        assert [e["cursor"] for e in body["edges"]] == [cursors[c] for c in got["uuids"]]
        checked += 1
    return checked


def test_the_order_is_newest_requested_first_with_ties_always_in_the_same_order(
    paged: Paged,
) -> None:
    assert len(paged.order) == 23
    times = [paged.requested[call] for call in paged.order]
    assert times == sorted(times, reverse=True)
    backward = paged.client.get("/calls", params={"last": 100}).json()["edges"]
    assert [e["node"]["uuid"] for e in backward] == paged.order
    assert [e["node"]["uuid"] for e in paged.client.get("/calls").json()["edges"]] == (
        paged.order[:10]
    )


def test_every_page_size_and_cursor_matches_the_documented_rules(paged: Paged) -> None:
    assert check_against_model(paged, paged.order, {}, paged.cursors) >= 70


def test_pages_of_a_filtered_set_match_the_rules_too(paged: Paged) -> None:
    # The oldest two groups of three are left out by the filter; cursors come from the set.
    cut = sorted(set(paged.requested.values()))[1]
    members = [c for c in paged.order if paged.requested[c] > cut]
    assert len(members) == 17
    filtered = paged.client.get("/calls", params={"first": 100, "requestedAfter": cut}).json()
    cursors = {e["node"]["uuid"]: e["cursor"] for e in filtered["edges"]}
    check_against_model(paged, members, {"requestedAfter": cut}, cursors)


def test_an_empty_set_has_no_cursors_and_no_neighbours(paged: Paged) -> None:
    future = iso(datetime.now(UTC) + timedelta(days=1))
    for params in ({}, {"first": 5}, {"last": 5}):
        body = paged.client.get("/calls", params={"requestedAfter": future, **params}).json()
        assert body == {
            "edges": [],
            "pageInfo": {"startCursor": None, "endCursor": None, "hasPreviousPage": False,
                         "hasNextPage": False},
        }  # fmt: skip


def test_cursors_are_opaque(paged: Paged) -> None:
    for call, cursor in paged.cursors.items():
        assert call not in cursor and call.replace("-", "") not in cursor
    assert len(set(paged.cursors.values())) == len(paged.cursors)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"first": 2, "last": 2}, "last"),
        ({"after": "A", "before": "B"}, "before"),
        ({"first": 101}, "first"),
        ({"last": 101}, "last"),
    ],
)
def test_combining_directions_or_oversized_pages_is_400(
    paged: Paged, params: dict[str, Any], field: str
) -> None:
    if "after" in params:
        params = {"after": paged.cursors[paged.order[3]], "before": paged.cursors[paged.order[1]]}
    assert_error(paged.client.get("/calls", params=params), 400, field)


def test_calls_requested_before_year_1000_sort_and_page_like_any_other(
    sandbox: SandboxServer,
) -> None:
    tenant = add_tenant(sandbox, "ancient")
    with tenant.client(sandbox) as client:
        old = create(client, tenant.person_uuid, "0999-12-31T23:59:59.999Z")
        older = create(client, tenant.person_uuid, "0005-06-07T08:09:10.011+00:00")
        newer = create(client, tenant.person_uuid, "2020-01-01T00:00:00.000Z")
        assert older["requestedAt"] == "0005-06-07T08:09:10.011Z"
        first = client.get("/calls", params={"first": 1}).json()
        assert [e["node"]["uuid"] for e in first["edges"]] == [newer["uuid"]]
        rest = client.get("/calls", params={"first": 5, "after": first["pageInfo"]["endCursor"]})
        assert [e["node"]["uuid"] for e in rest.json()["edges"]] == [old["uuid"], older["uuid"]]
        outside = {"uuid": str(uuid.uuid4()), "requestedAt": "0001-01-01T00:00:00+01:00",
                   "personUuid": tenant.person_uuid, "type": "winback"}  # fmt: skip
        assert_error(client.post("/calls", json=outside), 400, "requestedAt")


# --- time rules of the actions --------------------------------------------------------------------

# Per action: the field of its timestamp, and a body carrying a given timestamp there.
BODIES: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "add-attempt": ("attemptAt", lambda moment: {"attemptAt": moment}),
    "complete": (
        "result.completedAt",
        lambda moment: {"result": {"resultCode": "confirmed", "completedAt": moment}},
    ),
    "cancel": ("cancelledAt", lambda moment: {"cancelledAt": moment}),
    "expire": ("expiredAt", lambda moment: {"expiredAt": moment}),
}


@pytest.fixture(scope="module")
def timed(sandbox: SandboxServer) -> Iterator[tuple[httpx.Client, Tenant]]:
    tenant = add_tenant(sandbox, "timed", max_call_attempts=10)
    with tenant.client(sandbox) as client:
        yield client, tenant


@pytest.mark.parametrize("action", list(BODIES))
def test_a_time_one_millisecond_before_requested_at_is_refused_and_the_same_instant_accepted(
    timed: tuple[httpx.Client, Tenant], sandbox: SandboxServer, action: str
) -> None:
    client, tenant = timed
    requested = datetime.now(UTC).replace(microsecond=250000) - timedelta(hours=1)
    call = create(client, tenant.person_uuid, iso(requested))
    field, body = BODIES[action]
    refused = put(client, call["uuid"], action, body(iso(requested - MS)))
    assert_error(refused, 400, field)
    message = refused.json()["errors"][0]["message"]
    assert iso(requested) in message and iso(requested - MS) in message
    assert sandbox.effects(call["uuid"])[action] == 0
    accepted = put(client, call["uuid"], action, body(iso(requested)))
    assert accepted.status_code == 200, accepted.text
    assert sandbox.effects(call["uuid"])[action] == 1


@pytest.fixture
def documented_skew(sandbox: SandboxServer) -> Iterator[None]:
    """The documented 5 minutes of clock skew for one test (others widen it for virtual time)."""
    previous = sandbox.settings()["clockSkewSeconds"]
    sandbox.set_settings(clockSkewSeconds=300)
    yield
    sandbox.set_settings(clockSkewSeconds=previous)


@pytest.mark.parametrize("action", list(BODIES))
def test_a_time_beyond_the_clock_skew_is_refused_and_within_it_accepted(
    timed: tuple[httpx.Client, Tenant], documented_skew: None, action: str
) -> None:
    client, tenant = timed
    call = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(hours=1)))
    field, body = BODIES[action]
    too_late = iso(datetime.now(UTC) + timedelta(seconds=310))
    refused = put(client, call["uuid"], action, body(too_late))
    assert_error(refused, 400, field)
    assert "future" in refused.json()["message"] and too_late in refused.json()["message"]
    soon = iso(datetime.now(UTC) + timedelta(seconds=290))
    assert put(client, call["uuid"], action, body(soon)).status_code == 200


@pytest.mark.parametrize("action", list(BODIES))
def test_the_default_time_is_refused_for_a_call_requested_in_the_future(
    timed: tuple[httpx.Client, Tenant], action: str
) -> None:
    client, tenant = timed
    call = create(client, tenant.person_uuid, iso(datetime.now(UTC) + timedelta(minutes=10)))
    field, _ = BODIES[action]
    without_time = {"result": {"resultCode": "confirmed"}} if action == "complete" else {}
    refused = put(client, call["uuid"], action, without_time)
    assert_error(refused, 400, field)
    assert "the time of the request" in refused.json()["message"]


def test_externally_managed_calls_are_not_held_to_the_time_rules(
    timed: tuple[httpx.Client, Tenant],
) -> None:
    client, tenant = timed
    requested = datetime.now(UTC) - timedelta(hours=1)
    call = create(client, tenant.person_uuid, iso(requested),
                  externalMetadata={"applicationName": "dialer"})  # fmt: skip
    early = iso(requested - timedelta(days=1))
    assert put(client, call["uuid"], "add-attempt", {"attemptAt": early}).status_code == 200
    far = iso(datetime.now(UTC) + timedelta(days=30))
    assert put(client, call["uuid"], "expire", {"expiredAt": far}).status_code == 200


def test_a_time_outside_the_calendar_in_utc_is_400_naming_the_field(
    timed: tuple[httpx.Client, Tenant],
) -> None:
    client, tenant = timed
    call = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(hours=1)))
    response = put(client, call["uuid"], "cancel", {"cancelledAt": "9999-12-31T23:59:59-01:00"})
    assert_error(response, 400, "cancelledAt")


# --- maximum attempts and result codes ------------------------------------------------------------


def test_an_organizations_maximum_of_attempts_can_be_lowered_at_run_time(
    sandbox: SandboxServer,
) -> None:
    tenant = add_tenant(sandbox, "lowered", max_call_attempts=5)
    with tenant.client(sandbox) as client:
        call = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(hours=1)))
        assert put(client, call["uuid"], "add-attempt").status_code == 200
        sandbox.set_max_call_attempts(tenant.organization_uuid, 1)
        assert sandbox.organization(tenant.organization_uuid)["maxCallAttempts"] == 1
        refused = put(client, call["uuid"], "add-attempt")
        assert_error(refused, 400)
        assert "maximum of 1" in refused.json()["message"]
        sandbox.set_max_call_attempts(tenant.organization_uuid, 2)
        assert put(client, call["uuid"], "add-attempt").json()["attemptsCount"] == 2
    unknown = sandbox.admin.put(f"/organizations/{uuid.uuid4()}", json={"maxCallAttempts": 1})
    assert_error(unknown, 404)
    negative = sandbox.admin.put(
        f"/organizations/{tenant.organization_uuid}", json={"maxCallAttempts": -1}
    )
    assert_error(negative, 400, "maxCallAttempts")


# --- late_apply -----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_late_applied_create_is_not_there_until_the_delay_has_passed(
    timed: tuple[httpx.Client, Tenant], sandbox: SandboxServer, clean_faults: None
) -> None:
    client, tenant = timed
    sandbox.set_faults([{"endpoint": "create", "next": ["late_apply"],
                         "lateApplyDelaySeconds": 1.5}])  # fmt: skip
    requested = datetime.now(UTC) - timedelta(minutes=1)
    body = {"uuid": str(uuid.uuid4()), "requestedAt": iso(requested),
            "personUuid": tenant.person_uuid, "type": "winback"}  # fmt: skip
    impatient = httpx.Client(base_url=str(client.base_url), headers=client.headers, timeout=0.5)
    started = time.monotonic()
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/calls", json=body)
    # The look-up a retry makes first: not there yet.
    assert body["uuid"] not in uuids(client, requestedAfter=iso(requested - MS))
    assert sandbox.stored_call(body["uuid"]) is None
    assert sandbox.effects(body["uuid"])["create"] == 0
    wait_until(lambda: sandbox.stored_call(body["uuid"]) is not None, 5)
    assert time.monotonic() - started >= 1.5
    assert body["uuid"] in uuids(client, requestedAfter=iso(requested - MS))
    assert sandbox.effects(body["uuid"])["create"] == 1
    (logged,) = sandbox.requests(call_uuid=body["uuid"], endpoint="create")
    assert logged["status"] == 201 and logged["fault"] == "late_apply"
    assert_error(client.post("/calls", json=body), 409)
    assert sandbox.faults()["injected"]["create"]["late_apply"] >= 1


def test_a_late_applied_action_answers_after_the_delay_when_the_client_waits(
    timed: tuple[httpx.Client, Tenant], sandbox: SandboxServer, clean_faults: None
) -> None:
    client, tenant = timed
    call = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(minutes=1)))
    sandbox.set_faults([{"endpoint": "cancel", "lateApply": 1.0, "lateApplyDelaySeconds": 0.4}])
    started = time.monotonic()
    cancelled = put(client, call["uuid"], "cancel")
    assert time.monotonic() - started >= 0.4
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    (logged,) = sandbox.requests(call_uuid=call["uuid"], endpoint="cancel")
    assert logged["fault"] == "late_apply" and logged["status"] == 200
    assert sandbox.effects(call["uuid"])["cancel"] == 1
    assert sandbox.stats()["faults"]["late_apply"] >= 1


def test_late_apply_is_configured_like_the_other_kinds(
    sandbox: SandboxServer, clean_faults: None
) -> None:
    rules = sandbox.set_faults([{"endpoint": "expire", "next": ["late_apply", "late"]}])["rules"]
    assert rules[0]["lateApply"] == 0.0 and rules[0]["lateApplyDelaySeconds"] == 3.0
    assert sandbox.faults()["queued"] == {"expire": ["late_apply", "late"]}
    too_much = {"rules": [{"endpoint": "list", "late": 0.6, "lateApply": 0.6}]}
    assert_error(sandbox.admin.put("/faults", json=too_much), 400)


# --- credential outage ----------------------------------------------------------------------------


@pytest.fixture
def restore_credentials(sandbox: SandboxServer) -> Iterator[None]:
    yield
    sandbox.restore_credentials()


def test_a_credential_outage_refuses_every_request_until_switched_off(
    timed: tuple[httpx.Client, Tenant], sandbox: SandboxServer, restore_credentials: None
) -> None:
    client, tenant = timed
    call = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(minutes=1)))
    settings = sandbox.withdraw_credentials()
    assert settings["credentialOutage"] is True and settings["credentialOutageUntil"] is None
    refused = put(client, call["uuid"], "cancel")
    assert_error(refused, 401)
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert "withdrawn" in refused.json()["message"]
    assert_error(client.get("/calls"), 401)
    assert sandbox.effects(call["uuid"])["cancel"] == 0
    (logged,) = sandbox.requests(call_uuid=call["uuid"], endpoint="cancel")
    assert logged["status"] == 401 and logged["fault"] == "credential_outage"
    # The admin routes stay open.
    assert sandbox.stored_call(call["uuid"])["status"] == "requested"  # type: ignore[index]
    assert sandbox.restore_credentials()["credentialOutage"] is False
    assert put(client, call["uuid"], "cancel").status_code == 200


def test_a_timed_credential_outage_ends_by_itself(
    timed: tuple[httpx.Client, Tenant], sandbox: SandboxServer, restore_credentials: None
) -> None:
    client, _ = timed
    settings = sandbox.withdraw_credentials(seconds=0.6)
    until = datetime.fromisoformat(settings["credentialOutageUntil"])
    assert settings["credentialOutage"] is True
    assert timedelta(0) < until - datetime.now(UTC) <= timedelta(seconds=0.6)
    assert_error(client.get("/calls"), 401)
    wait_until(lambda: client.get("/calls").status_code == 200, 5)
    assert datetime.now(UTC) >= until
    assert sandbox.settings()["credentialOutage"] is False


def test_the_settings_round_trip_carries_an_outage(
    sandbox: SandboxServer, restore_credentials: None
) -> None:
    until = iso(datetime.now(UTC) + timedelta(hours=1))
    shown = sandbox.set_settings(credentialOutage=True, credentialOutageUntil=until)
    assert shown["credentialOutageUntil"] == until
    sandbox.restore_credentials()
    assert sandbox.set_settings(**shown) == shown


@pytest.mark.parametrize(
    "body",
    [
        {"credentialOutage": False, "credentialOutageSeconds": 5},
        {"credentialOutageSeconds": 5, "credentialOutageUntil": "2030-01-01T00:00:00Z"},
        {"credentialOutageUntil": "2030-01-01T00:00:00Z"},
        {"credentialOutageSeconds": 0},
    ],
)
def test_contradictory_outage_settings_are_400(
    sandbox: SandboxServer, body: dict[str, Any]
) -> None:
    assert_error(sandbox.admin.put("/settings", json=body), 400)
    assert sandbox.settings()["credentialOutage"] is False
