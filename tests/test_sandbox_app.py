"""The sandbox acts as the TapRaise app: its users request and change calls there, and a reader
of the API sees those changes through ``updatedAfter``, exclusive to the millisecond.

Everything goes over real HTTP to the sandbox process: the app's changes through its
``/_sandbox/app/`` routes (with the admin token), the API's with a service account's token.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from tests.sandbox_fixture import FINAL_TRANSITIONS, SandboxServer
from tests.test_sandbox import CALL_FIELDS, assert_error, iso, put
from tests.test_sandbox_strict import MS, Tenant, add_tenant, create, uuids

pytestmark = pytest.mark.timeout(60)

APP_USER = "0b6f8c1e-3f4a-4c51-9d0e-2a7b5c9e8f10"
RESULT: dict[str, Any] = {"result": {"resultCode": "confirmed"}}
BODIES: dict[str, dict[str, Any]] = {"complete": RESULT}


@pytest.fixture(scope="module")
def tenant(sandbox: SandboxServer) -> Tenant:
    """An organization of its own (two attempts at most), its person and its account."""
    return add_tenant(sandbox, "app", max_call_attempts=2)


@pytest.fixture(scope="module")
def client(sandbox: SandboxServer, tenant: Tenant) -> Iterator[httpx.Client]:
    with tenant.client(sandbox) as api:
        yield api


def stamp(call: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(call["lastUpdatedAt"])


def in_app(sandbox: SandboxServer, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    """A call requested in the app for the tenant's person."""
    fields.setdefault("requestedAt", iso(datetime.now(UTC) - timedelta(hours=1)))
    return sandbox.request_call_in_app(tenant.person_uuid, "verification", APP_USER, **fields)


def changed(sandbox: SandboxServer, call_uuid: str, action: str, **body: Any) -> dict[str, Any]:
    """Change a call in the app, expecting success."""
    response = sandbox.change_in_app(call_uuid, action, body or BODIES.get(action))
    assert response.status_code == 200, response.text
    call: dict[str, Any] = response.json()
    return call


# --- requesting a call in the app -----------------------------------------------------------------


def test_a_call_requested_in_the_app_is_listed_after_its_times_exclusively_to_the_millisecond(
    sandbox: SandboxServer, tenant: Tenant, client: httpx.Client
) -> None:
    instant = datetime.now(UTC).replace(microsecond=456000) - timedelta(hours=3)
    call = in_app(sandbox, tenant, requestedAt=iso(instant), notes="asked at the desk")
    assert set(call) == CALL_FIELDS
    assert (call["status"], call["type"], call["notes"]) == ("requested", "verification",
                                                             "asked at the desk")  # fmt: skip
    assert call["externalMetadata"] is None and call["requestedAt"] == iso(instant)
    updated = stamp(call)
    # Nothing of the tenant changed since: the call is the only one listed, and only from a
    # millisecond before its lastUpdatedAt, whatever the zone the instant is written in.
    assert uuids(client, updatedAfter=iso(updated - MS)) == [call["uuid"]]
    plus_two = timezone(timedelta(hours=2))
    for same in (iso(updated), updated.isoformat(), updated.astimezone(plus_two).isoformat()):
        assert uuids(client, updatedAfter=same) == [], same
    assert call["uuid"] in uuids(client, requestedAfter=iso(instant - MS))
    assert call["uuid"] not in uuids(client, requestedAfter=iso(instant))
    assert call["uuid"] not in uuids(
        client, requestedAfter=instant.astimezone(plus_two).isoformat()
    )
    # Both filters at once.
    both = {"updatedAfter": iso(updated - MS), "requestedAfter": iso(instant)}
    assert uuids(client, **both) == []
    both["requestedAfter"] = iso(instant - MS)
    assert uuids(client, **both) == [call["uuid"]]


def test_a_call_requested_in_the_app_without_a_time_is_requested_now(
    sandbox: SandboxServer, tenant: Tenant
) -> None:
    before = iso(datetime.now(UTC))
    call = sandbox.request_call_in_app(tenant.person_uuid, "winback", APP_USER)
    after = iso(datetime.now(UTC))
    assert before <= call["requestedAt"] <= call["lastUpdatedAt"] and call["requestedAt"] <= after
    assert call["type"] == "winback" and call["status"] == "requested"


def test_the_app_asks_for_an_existing_person_a_type_and_who_requested_the_call(
    sandbox: SandboxServer, tenant: Tenant
) -> None:
    taken = in_app(sandbox, tenant)["uuid"]
    good = {"uuid": str(uuid.uuid4()), "personUuid": tenant.person_uuid, "type": "happy_call",
            "requestedByUserUuid": APP_USER}  # fmt: skip
    refused: list[tuple[dict[str, Any], int, str | None]] = [
        ({"requestedByUserUuid": None}, 400, "requestedByUserUuid"),
        ({"type": None}, 400, "type"),
        ({"type": "sales"}, 400, "type"),
        ({"personUuid": str(uuid.uuid4())}, 400, "personUuid"),
        ({"callingOrganizationUuid": str(uuid.uuid4())}, 400, "callingOrganizationUuid"),
        ({"externalMetadata": {"applicationName": "crm"}}, 400, "externalMetadata"),
        ({"status": "completed"}, 400, "status"),
        ({"requestedAt": "2025-01-01T10:00:00"}, 400, "requestedAt"),
        ({"uuid": taken}, 409, None),
    ]
    for change, status, field in refused:
        body = {key: value for key, value in {**good, **change}.items() if value is not None}
        assert_error(sandbox.admin.post("/app/calls", json=body), status, field)
    # Read as strictly as the API: its camelCase names only.
    snake = {**good, "requested_by_user_uuid": APP_USER}
    del snake["requestedByUserUuid"]
    assert_error(sandbox.admin.post("/app/calls", json=snake), 400, "requested_by_user_uuid")
    assert sandbox.stored_call(good["uuid"]) is None
    assert sandbox.admin.post("/app/calls", json=good).status_code == 201


# --- changing a call in the app -------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second", "status"), FINAL_TRANSITIONS)
def test_a_change_in_the_app_moves_last_updated_at_and_is_refused_as_the_api_refuses_it(
    sandbox: SandboxServer,
    tenant: Tenant,
    client: httpx.Client,
    first: str,
    second: str,
    status: int,
) -> None:
    call = in_app(sandbox, tenant)
    done = changed(sandbox, call["uuid"], first)
    assert done["status"] == {"complete": "completed", "cancel": "cancelled",
                              "expire": "expired"}[first]  # fmt: skip
    assert stamp(done) > stamp(call)
    assert uuids(client, updatedAfter=iso(stamp(call))) == [call["uuid"]]
    assert uuids(client, updatedAfter=iso(stamp(done))) == []
    assert_error(sandbox.change_in_app(call["uuid"], second, BODIES.get(second)), status)
    assert_error(put(client, call["uuid"], second, BODIES.get(second)), status)
    assert sandbox.stored_call(call["uuid"]) == done


def test_attempts_in_the_app_each_move_last_updated_at_up_to_the_maximum(
    sandbox: SandboxServer, tenant: Tenant, client: httpx.Client
) -> None:
    call = in_app(sandbox, tenant)
    user = str(uuid.uuid4())
    attempt_at = iso(datetime.now(UTC) - timedelta(minutes=20))
    first = changed(sandbox, call["uuid"], "add-attempt", userUuid=user, attemptAt=attempt_at)
    second = changed(sandbox, call["uuid"], "add-attempt")
    assert stamp(call) < stamp(first) < stamp(second)
    assert first["attempts"] == [
        {"userUuid": user, "attemptAt": attempt_at, "createdAt": first["attempts"][0]["createdAt"]}
    ]
    assert second["attemptsCount"] == 2
    # The tenant's organization allows two: a third is refused in the app as through the API.
    assert_error(sandbox.change_in_app(call["uuid"], "add-attempt"), 400)
    assert_error(put(client, call["uuid"], "add-attempt"), 400)
    assert uuids(client, updatedAfter=iso(stamp(second))) == []


def test_the_time_rules_hold_in_the_app(sandbox: SandboxServer, tenant: Tenant) -> None:
    # TapRaise's own clock skew, whatever a test before this one set.
    previous = sandbox.settings()["clockSkewSeconds"]
    sandbox.set_settings(clockSkewSeconds=300)
    try:
        _time_rules_hold(sandbox, tenant)
    finally:
        sandbox.set_settings(clockSkewSeconds=previous)


def _time_rules_hold(sandbox: SandboxServer, tenant: Tenant) -> None:
    call = in_app(sandbox, tenant, requestedAt=iso(datetime.now(UTC) - timedelta(hours=1)))
    too_early = iso(datetime.now(UTC) - timedelta(hours=2))
    too_late = iso(datetime.now(UTC) + timedelta(days=2))
    refused: list[tuple[str, dict[str, Any], str]] = [
        ("add-attempt", {"attemptAt": too_early}, "attemptAt"),
        ("cancel", {"cancelledAt": too_late, "userUuid": APP_USER}, "cancelledAt"),
        ("expire", {"expiredAt": too_early}, "expiredAt"),
        ("complete", {"result": {"resultCode": "ok", "completedAt": too_late}},
         "result.completedAt"),
        ("complete", {"result": {"resultCode": "ok", "donorRetentionRating": "7"}},
         "result.donorRetentionRating"),
        ("cancel", {"reason": "moved"}, "reason"),
    ]  # fmt: skip
    for action, body, field in refused:
        assert_error(sandbox.change_in_app(call["uuid"], action, body), 400, field)
    assert sandbox.stored_call(call["uuid"]) == call
    assert_error(sandbox.change_in_app(str(uuid.uuid4()), "cancel"), 404)
    assert_error(sandbox.change_in_app("not-a-uuid", "cancel"), 400, "uuid")


def test_an_externally_managed_call_is_listed_by_updated_after_and_not_changed_in_the_app(
    sandbox: SandboxServer, tenant: Tenant, client: httpx.Client
) -> None:
    meta = {"applicationName": "dialer", "referenceId": f"ext-{uuid.uuid4()}"}
    external = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(hours=2)),
                      externalMetadata=meta)  # fmt: skip
    assert uuids(client, updatedAfter=iso(stamp(external) - MS)) == [external["uuid"]]
    refused = sandbox.change_in_app(external["uuid"], "cancel")
    assert_error(refused, 400)
    assert "managed externally" in refused.json()["message"]
    cancelled = put(client, external["uuid"], "cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert uuids(client, updatedAfter=iso(stamp(external))) == [external["uuid"]]


# --- lastUpdatedAt and paging ---------------------------------------------------------------------


def test_no_two_changes_share_a_last_updated_at_even_when_they_arrive_together(
    sandbox: SandboxServer, tenant: Tenant, client: httpx.Client
) -> None:
    requested_at = iso(datetime.now(UTC) - timedelta(hours=1))
    body = {"personUuid": tenant.person_uuid, "type": "verification",
            "requestedByUserUuid": APP_USER, "requestedAt": requested_at}  # fmt: skip

    async def together() -> list[dict[str, Any]]:
        # Sent at once, many land in the same millisecond.
        async with httpx.AsyncClient(
            base_url=f"{sandbox.base_url}/_sandbox", headers=sandbox.admin_headers, timeout=10
        ) as admin:
            answers = await asyncio.gather(
                *(admin.post("/app/calls", json=body) for _ in range(40))
            )
        return [answer.json() for answer in answers]

    calls = sorted(asyncio.run(together()), key=lambda call: call["lastUpdatedAt"])
    stamps = [stamp(call) for call in calls]
    assert len(set(stamps)) == len(calls)
    # Each listing after a change's lastUpdatedAt holds exactly the changes made after it.
    for index in (0, 13, 27, 38, 39):
        later = {call["uuid"] for call in calls[index + 1 :]}
        assert set(uuids(client, updatedAfter=iso(stamps[index]))) == later, index


def test_paging_after_a_time_visits_each_changed_call_once_newest_requested_first(
    sandbox: SandboxServer,
) -> None:
    tenant = add_tenant(sandbox, "paging")
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    calls: list[dict[str, Any]] = []
    with tenant.client(sandbox) as api:
        for i in range(24):
            requested_at = iso(base + timedelta(minutes=i))
            if i % 3 == 0:
                calls.append(sandbox.request_call_in_app(tenant.person_uuid, "winback", APP_USER,
                                                         requestedAt=requested_at))  # fmt: skip
            elif i % 3 == 1:
                calls.append(create(api, tenant.person_uuid, requested_at))
            else:
                meta = {"applicationName": "dialer", "referenceId": f"p-{i}"}
                calls.append(create(api, tenant.person_uuid, requested_at, externalMetadata=meta))
        since = max(stamp(call) for call in calls)
        touched = {0, 3, 4, 5, 9, 10, 14, 17, 20, 22, 23}
        last_change: dict[str, Any] = {}
        for i in sorted(touched):
            if i % 3 == 0:
                last_change = changed(sandbox, calls[i]["uuid"], "complete" if i % 2 else "cancel")
            else:
                response = put(api, calls[i]["uuid"], "add-attempt")
                assert response.status_code == 200, response.text
                last_change = response.json()
        newest_first = [calls[i]["uuid"] for i in sorted(touched, reverse=True)]
        # Where the round starts from: no change is later when it begins.
        round_start = stamp(last_change)
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"first": 4, "updatedAfter": iso(since)}
        while True:
            page = api.get("/calls", params=params).json()
            seen += [edge["node"] for edge in page["edges"]]
            if len(seen) == 4:
                # Changed again behind the cursor, and for the first time ahead of it.
                changed(sandbox, calls[22]["uuid"], "add-attempt")
                changed(sandbox, calls[6]["uuid"], "expire")
            if not page["pageInfo"]["hasNextPage"]:
                break
            params["after"] = page["pageInfo"]["endCursor"]
        # Call 6 comes between calls 9 and 5, the last four changed calls.
        expected = [*newest_first[:-4], calls[6]["uuid"], *newest_first[-4:]]
        assert [call["uuid"] for call in seen] == expected
        # The next round starts where this one started: it finds the change made behind the
        # cursor, which a round after the latest lastUpdatedAt seen would miss.
        assert uuids(api, updatedAfter=iso(round_start)) == [calls[22]["uuid"], calls[6]["uuid"]]
        assert uuids(api, updatedAfter=iso(max(stamp(call) for call in seen))) == []


# --- what tests see: log, effects, marks, access -------------------------------------------------


def test_app_changes_are_logged_as_the_apps_and_not_counted_among_the_api_effects(
    sandbox: SandboxServer, tenant: Tenant, client: httpx.Client
) -> None:
    before = sandbox.stats()
    call = in_app(sandbox, tenant)
    changed(sandbox, call["uuid"], "add-attempt", userUuid=APP_USER)
    changed(sandbox, call["uuid"], "complete", userUuid=APP_USER, **RESULT)
    assert_error(sandbox.change_in_app(call["uuid"], "complete", RESULT), 409)
    api_call = create(client, tenant.person_uuid, iso(datetime.now(UTC) - timedelta(hours=1)))
    changed(sandbox, api_call["uuid"], "cancel", userUuid=APP_USER)

    assert sandbox.effects(call["uuid"]) == dict.fromkeys(
        ("create", "add-attempt", "complete", "cancel", "expire"), 0
    )
    assert sandbox.effects(api_call["uuid"])["create"] == 1
    assert sandbox.effects(api_call["uuid"])["cancel"] == 0
    log = sandbox.requests(call_uuid=call["uuid"])
    assert [(r["method"], r["endpoint"], r["status"], r["accountEmail"]) for r in log] == [
        ("POST", "app:create", 201, None),
        ("PUT", "app:add-attempt", 200, None),
        ("PUT", "app:complete", 200, None),
        ("PUT", "app:complete", 409, None),
    ]
    assert log[0]["path"] == "/_sandbox/app/calls"
    assert log[0]["requestBody"]["requestedByUserUuid"] == APP_USER
    assert log[2]["path"] == f"/_sandbox/app/calls/{call['uuid']}/complete"
    assert log[2]["requestBody"]["userUuid"] == APP_USER
    api_log = sandbox.requests(call_uuid=api_call["uuid"])
    assert [(r["endpoint"], r["accountEmail"]) for r in api_log] == [
        ("create", tenant.email),
        ("app:cancel", None),
    ]
    after = sandbox.stats()
    assert after["requests"]["total"] - before["requests"]["total"] == 1
    assert not [name for name in after["requests"]["byEndpoint"] if name.startswith("app:")]
    assert after["appActions"]["total"] - before["appActions"]["total"] == 5
    assert after["appActions"]["byEndpoint"]["app:complete"]["409"] >= 1
    assert after["effects"]["create"] - before["effects"]["create"] == 1
    assert after["effects"]["cancel"] == before["effects"]["cancel"]


def test_marks_show_which_calls_are_marked_by_whom_and_change_nothing_in_them(
    sandbox: SandboxServer, tenant: Tenant, client: httpx.Client
) -> None:
    call = in_app(sandbox, tenant)
    other = sandbox.add_service_account(f"other-{uuid.uuid4().hex[:8]}@example.org",
                                        [tenant.organization_uuid], ["mark-processed"])  # fmt: skip
    processed_at = iso(datetime.now(UTC) - timedelta(seconds=1))

    def mark(api: httpx.Client, consumer: str) -> None:
        entry = {"entityName": "call", "entityUuid": call["uuid"], "processedAt": processed_at,
                 "consumerIdentifier": consumer}  # fmt: skip
        response = api.post("/entity-access/actions/mark-processed", json={"entries": [entry]})
        assert response.status_code == 204, response.text

    mark(client, "call-workflow-1")
    mark(client, "call-workflow-2")  # the same account again: its mark is replaced
    other_tenant = Tenant(tenant.organization_uuid, tenant.person_uuid, other["accountEmail"],
                          other["privateKeyId"], other["privateKey"])  # fmt: skip
    with other_tenant.client(sandbox) as other_api:
        mark(other_api, "ledger-7")
    marks = sandbox.marks("call", call["uuid"])
    assert [(m["accountEmail"], m["consumerIdentifier"]) for m in marks] == [
        (tenant.email, "call-workflow-2"),
        (other["accountEmail"], "ledger-7"),
    ]
    assert all(m["entityUuid"] == call["uuid"] and m["processedAt"] == processed_at for m in marks)
    assert sandbox.marks(entity_uuid=call["uuid"]) == marks
    assert sandbox.marks("person", call["uuid"]) == []
    # Marking is not a change of the call.
    assert sandbox.stored_call(call["uuid"]) == call
    assert call["uuid"] not in uuids(client, updatedAfter=iso(stamp(call)))


def test_the_app_routes_need_the_admin_token(sandbox: SandboxServer, tenant: Tenant) -> None:
    call = in_app(sandbox, tenant)
    new_uuid = str(uuid.uuid4())
    routes = [
        ("POST", "/_sandbox/app/calls",
         {"uuid": new_uuid, "personUuid": tenant.person_uuid, "type": "verification",
          "requestedByUserUuid": APP_USER}),
        *(("PUT", f"/_sandbox/app/calls/{call['uuid']}/{action}", BODIES.get(action, {}))
          for action in ("add-attempt", "complete", "cancel", "expire")),
    ]  # fmt: skip
    with tenant.client(sandbox) as api:
        service_account = api.headers["Authorization"]
    with httpx.Client(base_url=sandbox.base_url) as anyone:
        for method, path, body in routes:
            for authorization in (None, service_account, "Bearer not-the-admin-token-at-all"):
                headers = {} if authorization is None else {"Authorization": authorization}
                assert_error(anyone.request(method, path, headers=headers, json=body), 401)
    assert sandbox.stored_call(new_uuid) is None
    assert sandbox.stored_call(call["uuid"]) == call
    assert [r["endpoint"] for r in sandbox.requests(call_uuid=call["uuid"])] == ["app:create"]


def test_an_unescaped_plus_in_a_time_filter_is_a_400_that_says_how_to_send_it(
    client: httpx.Client,
) -> None:
    # A "+" typed into a URL arrives as a space.
    response = client.get("/calls?updatedAfter=2025-01-01T00:00:00.000+00:00")
    assert_error(response, 400, "updatedAfter")
    assert "%2B" in response.json()["message"]
    escaped = client.get("/calls", params={"updatedAfter": "2025-01-01T00:00:00.000+00:00"})
    assert escaped.status_code == 200, escaped.text
