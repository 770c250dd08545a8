"""The real client against the sandbox over loopback HTTP: every endpoint, status and fault.

No mocks: each test signs real tokens, sends real requests and checks what the sandbox stored,
applied and logged. The calls are made by a service account of an organization of this module's
own (added through the sandbox's admin routes), so the sets a test asserts on are exact and the
demo account's call list, which other modules page through, stays as they left it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from sandbox.seed import (
    ALL_ACTIONS,
    FOREIGN_PERSON_UUID,
    SECOND_ORG_PERSON_UUIDS,
)
from tapraise import (
    AddAttemptRequest,
    APIStatusError,
    APITimeoutError,
    Attempt,
    AuthenticationError,
    BadRequestError,
    Call,
    CallResult,
    CallStatus,
    CallType,
    CancelCallRequest,
    CompleteCallRequest,
    ConflictError,
    CreateCallRequest,
    EntityName,
    ExpireCallRequest,
    ExternalMetadata,
    InternalServerError,
    MarkProcessedEntry,
    MarkProcessedErrors,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceAccount,
    TapRaiseClient,
    TokenSigner,
)
from tapraise.client import FIND_LATER, FIND_WINDOWS, MAX_PAGE_SIZE
from tests.helpers import account_of, demo_account, fresh_private_key_pem, now
from tests.sandbox_fixture import SandboxServer

pytestmark = pytest.mark.timeout(60)

HOME_ORGANIZATION = str(uuid.uuid4())
PERSON = str(uuid.uuid4())
USER = uuid.UUID("3b0c5f0e-8d6a-4c1e-9a51-7f3c2d1e0b4a")
CROWD_SIZE = 263
IMPATIENT = httpx.Timeout(5.0, read=0.5)
LATE_DELAY_SECONDS = 2.0


# --- building blocks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenant:
    """A service account alone in an organization of its own, with one person."""

    account: ServiceAccount
    organization_uuid: str
    person_uuid: str


def add_tenant(
    sandbox: SandboxServer, label: str, *, max_call_attempts: int = 5, persons: int = 1
) -> Tenant:
    organization = sandbox.add_organization(f"{label} {uuid.uuid4()}", max_call_attempts)
    person = sandbox.add_person(organization["uuid"], first_name=label)
    for _ in range(persons - 1):
        sandbox.add_person(organization["uuid"])
    credentials = sandbox.add_service_account(
        f"{label}-{uuid.uuid4().hex[:8]}@example.org", [organization["uuid"]], list(ALL_ACTIONS)
    )
    return Tenant(account_of(credentials), organization["uuid"], person["uuid"])


def managed_call(
    person_uuid: str = PERSON,
    *,
    requested_at: datetime | None = None,
    call_type: CallType = CallType.HAPPY_CALL,
    **fields: Any,
) -> CreateCallRequest:
    """A call managed in TapRaise, requested a minute ago unless told otherwise."""
    return CreateCallRequest(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(person_uuid),
        requested_at=requested_at or now() - timedelta(minutes=1),
        type=call_type,
        **fields,
    )


def external_call(
    person_uuid: str, application: str, reference: str, *, requested_at: datetime
) -> CreateCallRequest:
    return CreateCallRequest(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(person_uuid),
        requested_at=requested_at,
        external_metadata=ExternalMetadata(application_name=application, reference_id=reference),
    )


COMPLETE = CompleteCallRequest(
    user_uuid=USER,
    result=CallResult(
        result_code="confirmed", notes="Happy to stay", duration=120.23, donor_retention_rating=7
    ),
)

Action = Callable[[TapRaiseClient, uuid.UUID], Awaitable[Call]]
FINISH: dict[str, Action] = {
    "complete": lambda client, call_uuid: client.complete_call(call_uuid, COMPLETE),
    "cancel": lambda client, call_uuid: client.cancel_call(call_uuid),
    "expire": lambda client, call_uuid: client.expire_call(call_uuid),
}
ACTIONS: dict[str, Action] = {
    "add-attempt": lambda client, call_uuid: client.add_attempt(call_uuid),
    **FINISH,
}
STATUS_OF = {
    "complete": CallStatus.COMPLETED,
    "cancel": CallStatus.CANCELLED,
    "expire": CallStatus.EXPIRED,
}


async def collect(calls: AsyncIterator[Call]) -> list[str]:
    return [str(call.uuid) async for call in calls]


@pytest.fixture(scope="module")
def home(sandbox: SandboxServer) -> ServiceAccount:
    """A service account for ``HOME_ORGANIZATION`` (5 attempts), which owns ``PERSON``."""
    sandbox.add_organization("Client Tests Foundation", 5, uuid=HOME_ORGANIZATION)
    sandbox.add_person(HOME_ORGANIZATION, uuid=PERSON, first_name="Home")
    credentials = sandbox.add_service_account(
        f"client-tests-{uuid.uuid4().hex[:8]}@example.org", [HOME_ORGANIZATION], list(ALL_ACTIONS)
    )
    return account_of(credentials)


@pytest_asyncio.fixture
async def client(sandbox: SandboxServer, home: ServiceAccount) -> AsyncIterator[TapRaiseClient]:
    async with TapRaiseClient(sandbox.base_url, home) as own:
        yield own


@pytest_asyncio.fixture
async def demo_client(sandbox: SandboxServer) -> AsyncIterator[TapRaiseClient]:
    async with TapRaiseClient(sandbox.base_url, demo_account(sandbox)) as demo:
        yield demo


async def new_call(client: TapRaiseClient, person_uuid: str = PERSON) -> Call:
    return await client.create_call(managed_call(person_uuid))


# --- create -------------------------------------------------------------------------------------


async def test_create_managed_call_returns_the_call_exactly_as_stored(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    request = managed_call(notes="Thank for the first year")
    call = await client.create_call(request)
    assert call.uuid == request.uuid
    assert call.status is CallStatus.REQUESTED and call.type is CallType.HAPPY_CALL
    assert call.requested_at == request.requested_at
    assert call.person_uuid == request.person_uuid
    assert call.attempts == [] and call.attempts_count == 0 and call.result is None
    assert call.notes == "Thank for the first year"
    assert call == Call.model_validate(sandbox.stored_call(str(call.uuid)))
    assert sandbox.effects(str(call.uuid))["create"] == 1


async def test_create_without_uuid_gets_one_from_the_server(client: TapRaiseClient) -> None:
    request = managed_call().model_copy(update={"uuid": None})
    call = await client.create_call(request)
    assert call.uuid.version == 4


async def test_create_external_call_keeps_status_result_attempts_and_metadata(
    client: TapRaiseClient,
) -> None:
    requested_at = now() - timedelta(hours=2)
    request = CreateCallRequest(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(PERSON),
        requested_at=requested_at,
        status=CallStatus.COMPLETED,
        external_metadata=ExternalMetadata(
            application_name="call-centre",
            reference_id="REF-1",
            additional_properties={"campaign": "spring"},
        ),
        attempts=[Attempt(user_uuid=USER, attempt_at=requested_at + timedelta(minutes=5))],
        result=CallResult(result_code="confirmed", completed_at=requested_at + timedelta(hours=1)),
    )
    call = await client.create_call(request)
    assert call.type is CallType.VERIFICATION
    assert call.status is CallStatus.COMPLETED
    assert call.external_metadata is not None
    assert call.external_metadata.additional_properties == {"campaign": "spring"}
    assert [a.user_uuid for a in call.attempts] == [USER] and call.attempts_count == 1
    assert call.result is not None and call.result.result_code == "confirmed"
    assert call.completed_at == requested_at + timedelta(hours=1)


async def test_second_create_with_the_same_uuid_raises_conflict_and_saves_nothing(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    request = managed_call()
    first = await client.create_call(request)
    with pytest.raises(ConflictError) as raised:
        await client.create_call(request.model_copy(update={"notes": "changed"}))
    assert raised.value.status_code == 409
    assert raised.value.message == "Call already exists"
    assert sandbox.effects(str(request.uuid))["create"] == 1
    assert Call.model_validate(sandbox.stored_call(str(request.uuid))) == first


async def test_create_for_an_unknown_person_raises_bad_request_naming_the_field(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    request = managed_call(str(uuid.uuid4()))
    with pytest.raises(BadRequestError) as raised:
        await client.create_call(request)
    assert "personUuid" in raised.value.message
    assert raised.value.body["errors"] == [
        {"field": "personUuid", "message": "Person does not exist"}
    ]
    assert sandbox.stored_call(str(request.uuid)) is None


async def test_create_for_a_person_of_a_foreign_organization_raises_permission_denied(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    request = managed_call(FOREIGN_PERSON_UUID)
    with pytest.raises(PermissionDeniedError) as raised:
        await client.create_call(request)
    assert raised.value.status_code == 403
    assert raised.value.message == "Service account may not create calls for this person"
    assert sandbox.stored_call(str(request.uuid)) is None


# --- actions ------------------------------------------------------------------------------------


async def test_add_attempt_records_the_user_and_the_time_given(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    attempt_at = now() - timedelta(seconds=10)
    updated = await client.add_attempt(
        call.uuid, AddAttemptRequest(user_uuid=USER, attempt_at=attempt_at)
    )
    assert updated.attempts_count == 1
    (attempt,) = updated.attempts
    assert attempt.user_uuid == USER and attempt.attempt_at == attempt_at
    assert updated.last_updated_at is not None and call.last_updated_at is not None
    assert updated.last_updated_at >= call.last_updated_at
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 1


async def test_add_attempt_without_a_time_records_it_now(client: TapRaiseClient) -> None:
    call = await new_call(client)
    before = now() - timedelta(seconds=1)
    updated = await client.add_attempt(call.uuid)
    (attempt,) = updated.attempts
    assert attempt.attempt_at is not None and before <= attempt.attempt_at <= now()
    assert attempt.user_uuid is None


async def test_complete_stores_the_result(client: TapRaiseClient, sandbox: SandboxServer) -> None:
    call = await new_call(client)
    completed = await client.complete_call(call.uuid, COMPLETE)
    assert completed.status is CallStatus.COMPLETED and completed.is_final
    assert completed.result is not None
    assert completed.result.result_code == "confirmed"
    assert completed.result.duration == 120.23 and completed.result.donor_retention_rating == 7
    assert completed.result.notes == "Happy to stay"
    assert completed.completed_at is not None
    assert completed.completed_at == completed.result.completed_at
    assert sandbox.effects(str(call.uuid))["complete"] == 1


async def test_cancel_and_expire_use_the_time_given(client: TapRaiseClient) -> None:
    at = (now() - timedelta(seconds=5)).replace(microsecond=0)
    cancelled = await client.cancel_call(
        (await new_call(client)).uuid, CancelCallRequest(cancelled_at=at)
    )
    expired = await client.expire_call(
        (await new_call(client)).uuid, ExpireCallRequest(expired_at=at)
    )
    assert (cancelled.status, cancelled.cancelled_at) == (CallStatus.CANCELLED, at)
    assert (expired.status, expired.expired_at) == (CallStatus.EXPIRED, at)


async def test_expire_without_a_time_expires_the_call_now(client: TapRaiseClient) -> None:
    before = now() - timedelta(seconds=1)
    expired = await client.expire_call((await new_call(client)).uuid)
    assert expired.status is CallStatus.EXPIRED
    assert expired.expired_at is not None and before <= expired.expired_at <= now()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("complete", "Call already completed"),
        ("cancel", "Call already cancelled"),
        ("expire", "Call already expired"),
    ],
)
async def test_repeating_a_final_action_raises_conflict_and_changes_nothing(
    client: TapRaiseClient, sandbox: SandboxServer, action: str, message: str
) -> None:
    call = await new_call(client)
    done = await FINISH[action](client, call.uuid)
    with pytest.raises(ConflictError) as raised:
        await FINISH[action](client, call.uuid)
    assert raised.value.status_code == 409 and raised.value.message == message
    assert sandbox.effects(str(call.uuid))[action] == 1
    assert Call.model_validate(sandbox.stored_call(str(call.uuid))) == done


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (first, then)
        for first in ("complete", "cancel", "expire")
        for then in ("add-attempt", "complete", "cancel", "expire")
        if then != first
    ],
)
async def test_any_action_on_a_call_in_another_final_status_raises_bad_request(
    client: TapRaiseClient, sandbox: SandboxServer, first: str, then: str
) -> None:
    call = await new_call(client)
    await FINISH[first](client, call.uuid)
    with pytest.raises(BadRequestError) as raised:
        await ACTIONS[then](client, call.uuid)
    assert raised.value.message.startswith(f"Call is {STATUS_OF[first].value}")
    assert sandbox.effects(str(call.uuid))[then] == 0
    assert sandbox.stored_call(str(call.uuid))["status"] == STATUS_OF[first]  # type: ignore[index]


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_any_action_on_an_unknown_call_raises_not_found(
    client: TapRaiseClient, action: str
) -> None:
    with pytest.raises(NotFoundError) as raised:
        await ACTIONS[action](client, uuid.uuid4())
    assert raised.value.status_code == 404 and raised.value.message == "Call is not found"


async def test_attempts_beyond_the_owning_organizations_maximum_raise_bad_request(
    demo_client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(demo_client, SECOND_ORG_PERSON_UUIDS[0])  # Second Charity allows 3
    for expected in (1, 2, 3):
        assert (await demo_client.add_attempt(call.uuid)).attempts_count == expected
    with pytest.raises(BadRequestError) as raised:
        await demo_client.add_attempt(call.uuid)
    assert raised.value.message == "Call already has 3 attempts, the maximum of 3"
    stored = sandbox.stored_call(str(call.uuid))
    assert stored is not None
    assert stored["attemptsCount"] == 3 and stored["status"] == "requested"
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 3


async def test_the_maximum_follows_the_persons_organization_not_the_account(
    sandbox: SandboxServer,
) -> None:
    tenant = add_tenant(sandbox, "single-attempt", max_call_attempts=1)
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        call = await new_call(own, tenant.person_uuid)
        await own.add_attempt(call.uuid)
        with pytest.raises(BadRequestError, match="the maximum of 1"):
            await own.add_attempt(call.uuid)


async def test_attempt_before_the_requested_time_raises_bad_request_naming_the_field(
    client: TapRaiseClient,
) -> None:
    call = await new_call(client)
    early = AddAttemptRequest(attempt_at=call.requested_at - timedelta(minutes=1))
    with pytest.raises(BadRequestError) as raised:
        await client.add_attempt(call.uuid, early)
    assert raised.value.body["errors"][0]["field"] == "attemptAt"
    assert "Must not be before requestedAt" in raised.value.message


async def test_action_on_a_call_of_an_organization_the_account_does_not_represent_is_denied(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    tenant = add_tenant(sandbox, "other-charity")
    async with TapRaiseClient(sandbox.base_url, tenant.account) as other:
        foreign_call = await new_call(other, tenant.person_uuid)
    with pytest.raises(PermissionDeniedError) as raised:
        await client.cancel_call(foreign_call.uuid)
    assert "does not represent the organization" in raised.value.message
    assert sandbox.effects(str(foreign_call.uuid))["cancel"] == 0


async def test_an_account_lacking_an_action_is_denied_only_that_action(
    sandbox: SandboxServer, home: ServiceAccount
) -> None:
    actions = [action for action in ALL_ACTIONS if action != "expire"]
    credentials = sandbox.add_service_account(
        f"no-expire-{uuid.uuid4().hex[:8]}@example.org", [HOME_ORGANIZATION], actions
    )
    async with TapRaiseClient(sandbox.base_url, account_of(credentials)) as limited:
        call = await new_call(limited)
        with pytest.raises(PermissionDeniedError) as raised:
            await limited.expire_call(call.uuid)
        assert raised.value.message == (
            f"Service account {credentials['accountEmail']} may not perform 'expire'"
        )
        assert (await limited.cancel_call(call.uuid)).status is CallStatus.CANCELLED


# --- authentication -----------------------------------------------------------------------------


async def test_a_token_signed_with_a_key_the_server_does_not_know_is_refused_after_one_resign(
    sandbox: SandboxServer,
) -> None:
    impostor = ServiceAccount(
        email=sandbox.account_email,
        private_key_id=sandbox.private_key_id,
        private_key_pem=fresh_private_key_pem(),
    )
    request = managed_call()
    async with TapRaiseClient(sandbox.base_url, impostor) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.create_call(request)
    assert raised.value.status_code == 401
    assert raised.value.message == "Token signature is invalid"
    logged = sandbox.requests(call_uuid=str(request.uuid), endpoint="create")
    assert [entry["status"] for entry in logged] == [401, 401]
    assert sandbox.stored_call(str(request.uuid)) is None


async def test_an_unknown_key_id_is_refused(sandbox: SandboxServer) -> None:
    stranger = ServiceAccount(
        email=sandbox.account_email,
        private_key_id="not-a-registered-key",
        private_key_pem=sandbox.private_key_pem,
    )
    async with TapRaiseClient(sandbox.base_url, stranger) as client:
        with pytest.raises(AuthenticationError, match="Unknown key id"):
            await client.list_calls_page(first=1)


async def test_an_expired_token_is_refused(sandbox: SandboxServer) -> None:
    account = demo_account(sandbox)
    two_hours_ago = TokenSigner(account, clock=lambda: now() - timedelta(hours=2))
    async with TapRaiseClient(sandbox.base_url, account, signer=two_hours_ago) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.list_calls_page(first=1)
    assert raised.value.message == "Token has expired"


async def test_a_client_clock_half_a_minute_ahead_of_tapraise_is_accepted(
    sandbox: SandboxServer,
) -> None:
    account = demo_account(sandbox)
    ahead = TokenSigner(account, clock=lambda: now() + timedelta(seconds=30))
    async with TapRaiseClient(sandbox.base_url, account, signer=ahead) as client:
        page = await client.list_calls_page(first=1)
    assert len(page.calls) <= 1


async def test_a_client_clock_ten_minutes_ahead_of_tapraise_is_refused_naming_the_clock(
    sandbox: SandboxServer,
) -> None:
    account = demo_account(sandbox)
    ahead = TokenSigner(account, clock=lambda: now() + timedelta(minutes=10))
    async with TapRaiseClient(sandbox.base_url, account, signer=ahead) as client:
        with pytest.raises(AuthenticationError) as raised:
            await client.list_calls_page(first=1)
    assert raised.value.status_code == 401
    assert "issued in the future" in raised.value.message
    assert "check the client's clock" in raised.value.message


async def test_a_credential_outage_is_an_authentication_error_after_one_resign(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    request = managed_call()
    sandbox.withdraw_credentials()
    try:
        with pytest.raises(AuthenticationError) as raised:
            await client.create_call(request)
    finally:
        sandbox.restore_credentials()
    assert raised.value.status_code == 401
    assert raised.value.message == "Service account credentials have been withdrawn"
    logged = sandbox.requests(call_uuid=str(request.uuid), endpoint="create")
    assert [(entry["status"], entry["fault"]) for entry in logged] == [
        (401, "credential_outage"),
        (401, "credential_outage"),
    ]
    # Once the credentials are back, the same request goes through.
    assert (await client.create_call(request)).uuid == request.uuid


# --- list, find, pagination ---------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """A tenant's calls for the filter tests, each named for what distinguishes it."""

    tenant: Tenant
    oldest: Call
    middle: Call
    newest_managed: Call
    external_one: Call
    external_two: Call


@pytest_asyncio.fixture(scope="module")
async def listed(sandbox: SandboxServer) -> Listed:
    tenant = add_tenant(sandbox, "filters")
    base = now() - timedelta(hours=4)
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        oldest = await own.create_call(managed_call(tenant.person_uuid, requested_at=base))
        middle = await own.create_call(
            managed_call(tenant.person_uuid, requested_at=base + timedelta(hours=1))
        )
        newest_managed = await own.create_call(
            managed_call(tenant.person_uuid, requested_at=base + timedelta(hours=2))
        )
        external_one = await own.create_call(
            external_call(tenant.person_uuid, "crm", "R-1", requested_at=base + timedelta(hours=3))
        )
        external_two = await own.create_call(
            external_call(
                tenant.person_uuid, "crm", "R-2", requested_at=base + timedelta(hours=3, minutes=1)
            )
        )
    return Listed(tenant, oldest, middle, newest_managed, external_one, external_two)


@pytest_asyncio.fixture
async def tenant_client(sandbox: SandboxServer, listed: Listed) -> AsyncIterator[TapRaiseClient]:
    async with TapRaiseClient(sandbox.base_url, listed.tenant.account) as own:
        yield own


async def test_list_without_filters_is_the_accounts_calls_newest_first(
    tenant_client: TapRaiseClient, listed: Listed
) -> None:
    page = await tenant_client.list_calls_page()
    assert [call.uuid for call in page.calls] == [
        listed.external_two.uuid,
        listed.external_one.uuid,
        listed.newest_managed.uuid,
        listed.middle.uuid,
        listed.oldest.uuid,
    ]
    assert not page.page_info.has_next_page and not page.page_info.has_previous_page


async def test_list_filtered_by_requested_after_keeps_later_calls(
    tenant_client: TapRaiseClient, listed: Listed
) -> None:
    after = listed.middle.requested_at - timedelta(minutes=30)
    found = await collect(tenant_client.list_calls(requested_after=after))
    assert found == [
        str(listed.external_two.uuid),
        str(listed.external_one.uuid),
        str(listed.newest_managed.uuid),
        str(listed.middle.uuid),
    ]


async def test_list_filtered_by_external_reference_finds_that_call(
    tenant_client: TapRaiseClient, listed: Listed
) -> None:
    found = await collect(
        tenant_client.list_calls(external_application_name="crm", external_reference_id="R-1")
    )
    assert found == [str(listed.external_one.uuid)]


async def test_list_filtered_by_null_reference_finds_the_calls_managed_in_tapraise(
    tenant_client: TapRaiseClient, listed: Listed
) -> None:
    found = await collect(
        tenant_client.list_calls(external_application_name="null", external_reference_id="null")
    )
    assert found == [
        str(listed.newest_managed.uuid),
        str(listed.middle.uuid),
        str(listed.oldest.uuid),
    ]


async def test_list_filtered_by_updated_after_finds_the_calls_changed_since(
    tenant_client: TapRaiseClient, listed: Listed
) -> None:
    async def latest_change() -> datetime:
        changes = [c.last_updated_at async for c in tenant_client.list_calls()]
        return max(change for change in changes if change is not None)

    since = await latest_change()
    await asyncio.sleep(0.01)  # TapRaise compares milliseconds
    await tenant_client.add_attempt(listed.oldest.uuid)
    found = await collect(tenant_client.list_calls(updated_after=since))
    assert found == [str(listed.oldest.uuid)]


async def test_an_invalid_cursor_raises_bad_request(tenant_client: TapRaiseClient) -> None:
    with pytest.raises(BadRequestError) as raised:
        await tenant_client.list_calls_page(first=5, after="not-a-cursor")
    assert raised.value.body["errors"] == [{"field": "after", "message": "Invalid cursor"}]


async def test_find_call_returns_the_call_as_listed(
    tenant_client: TapRaiseClient, listed: Listed
) -> None:
    found = await tenant_client.find_call(str(listed.middle.uuid), listed.middle.requested_at)
    assert found == listed.middle


async def test_find_call_returns_none_for_an_unknown_or_invisible_call(
    client: TapRaiseClient, tenant_client: TapRaiseClient, listed: Listed
) -> None:
    assert await tenant_client.find_call(uuid.uuid4(), listed.middle.requested_at) is None
    # Another organization's call exists, but this account cannot see it.
    assert await client.find_call(listed.middle.uuid, listed.middle.requested_at) is None


@dataclass(frozen=True)
class Crowd:
    """More calls than two full pages, all of one account, newest first."""

    account: ServiceAccount
    newest_first: list[str]


@pytest_asyncio.fixture(scope="module")
async def crowd(sandbox: SandboxServer) -> Crowd:
    tenant = add_tenant(sandbox, "crowd", persons=3)
    base = now() - timedelta(days=1)
    # Distinct request times, created in a shuffled order, so the list order is only the sort.
    requests = [
        managed_call(tenant.person_uuid, requested_at=base - timedelta(minutes=i))
        for i in range(CROWD_SIZE)
    ]
    order = sorted(range(CROWD_SIZE), key=lambda i: (i * 97) % CROWD_SIZE)
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        for start in range(0, CROWD_SIZE, 25):
            batch = order[start : start + 25]
            await asyncio.gather(*(own.create_call(requests[i]) for i in batch))
    return Crowd(tenant.account, [str(request.uuid) for request in requests])


@pytest_asyncio.fixture
async def crowd_client(sandbox: SandboxServer, crowd: Crowd) -> AsyncIterator[TapRaiseClient]:
    async with TapRaiseClient(sandbox.base_url, crowd.account) as own:
        yield own


def assert_each_once(seen: Sequence[str], expected: Sequence[str]) -> None:
    assert len(seen) == len(set(seen)), "a call was listed twice"
    assert set(seen) == set(expected), "a call was missed or a stranger listed"


async def test_forward_listing_visits_every_call_once_newest_first(
    crowd_client: TapRaiseClient, crowd: Crowd
) -> None:
    seen = await collect(crowd_client.list_calls())
    assert_each_once(seen, crowd.newest_first)
    assert seen == crowd.newest_first


async def test_forward_listing_with_small_pages_visits_every_call_once(
    crowd_client: TapRaiseClient, crowd: Crowd
) -> None:
    seen = await collect(crowd_client.list_calls(page_size=37))
    assert seen == crowd.newest_first


async def test_backward_listing_visits_every_call_once_pages_oldest_first(
    crowd_client: TapRaiseClient, crowd: Crowd
) -> None:
    seen = await collect(crowd_client.list_calls(backward=True))
    assert_each_once(seen, crowd.newest_first)
    # Pages arrive oldest first, each one newest first.
    pages = [seen[i : i + 100] for i in range(0, len(seen), 100)]
    assert [call for page in reversed(pages) for call in page] == crowd.newest_first


async def test_pages_chain_forward_and_back_with_consistent_page_info(
    crowd_client: TapRaiseClient, crowd: Crowd
) -> None:
    forward = []
    cursor: str | None = None
    while True:
        page = await crowd_client.list_calls_page(first=100, after=cursor)
        forward.append(page)
        assert page.page_info.has_previous_page == (len(forward) > 1)
        assert page.page_info.start_cursor == page.edges[0].cursor
        assert page.page_info.end_cursor == page.edges[-1].cursor
        if not page.page_info.has_next_page:
            break
        cursor = page.page_info.end_cursor
    assert [len(page.edges) for page in forward] == [100, 100, CROWD_SIZE - 200]
    assert [str(c.uuid) for page in forward for c in page.calls] == crowd.newest_first

    # From the last page, walking back with `before` retraces the same pages.
    backward = [forward[-1]]
    while backward[-1].page_info.has_previous_page:
        backward.append(
            await crowd_client.list_calls_page(last=100, before=backward[-1].page_info.start_cursor)
        )
    assert [[e.cursor for e in page.edges] for page in reversed(backward)] == [
        [e.cursor for e in page.edges] for page in forward
    ]


async def test_last_alone_is_the_end_of_the_list_and_first_alone_its_start(
    crowd_client: TapRaiseClient, crowd: Crowd
) -> None:
    head = await crowd_client.list_calls_page(first=3)
    tail = await crowd_client.list_calls_page(last=3)
    default = await crowd_client.list_calls_page()
    assert [str(c.uuid) for c in head.calls] == crowd.newest_first[:3]
    assert [str(c.uuid) for c in tail.calls] == crowd.newest_first[-3:]
    assert [str(c.uuid) for c in default.calls] == crowd.newest_first[:10]
    assert head.page_info.has_next_page and not head.page_info.has_previous_page
    assert tail.page_info.has_previous_page and not tail.page_info.has_next_page


# --- mark processed -----------------------------------------------------------------------------


def marks(sandbox: SandboxServer) -> list[dict[str, Any]]:
    response = sandbox.admin.get("/marks")
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["marks"]
    return found


async def test_mark_processed_marks_every_entry(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    processed_at = now().replace(microsecond=0)
    entries = [
        MarkProcessedEntry(
            entity_name=EntityName.CALL,
            entity_uuid=call.uuid,
            processed_at=processed_at,
            consumer_identifier="12345",
            external_source_name="crm",
        ),
        MarkProcessedEntry(
            entity_name=EntityName.PERSON,
            entity_uuid=uuid.UUID(PERSON),
            processed_at=processed_at,
        ),
    ]
    await client.mark_processed(entries)
    (mark,) = [m for m in marks(sandbox) if m["entityUuid"] == str(call.uuid)]
    assert mark["entityName"] == "call" and mark["consumerIdentifier"] == "12345"
    logged = sandbox.requests(endpoint="mark-processed")[-1]
    assert logged["status"] == 204


async def test_mark_processed_lists_the_failed_entries_and_keeps_the_others(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    unknown = uuid.uuid4()
    processed_at = now()
    entries = [
        MarkProcessedEntry(entity_name=EntityName.CALL, entity_uuid=call.uuid, processed_at=now()),
        MarkProcessedEntry(
            entity_name=EntityName.CALL, entity_uuid=unknown, processed_at=processed_at
        ),
    ]
    with pytest.raises(BadRequestError) as raised:
        await client.mark_processed(entries)
    assert raised.value.message == "1 of 2 entries were not marked"
    failures = MarkProcessedErrors.model_validate(raised.value.body).errors
    assert [(f.entity_name, f.entity_uuid, f.message) for f in failures] == [
        ("call", str(unknown), "call not found")
    ]
    marked = {m["entityUuid"] for m in marks(sandbox)}
    assert str(call.uuid) in marked and str(unknown) not in marked


async def test_mark_processed_with_no_entries_sends_nothing(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    before = len(sandbox.requests(endpoint="mark-processed"))
    await client.mark_processed([])
    assert len(sandbox.requests(endpoint="mark-processed")) == before


# --- persistence --------------------------------------------------------------------------------


async def test_calls_and_accounts_survive_a_restart(sandbox: SandboxServer) -> None:
    tenant = add_tenant(sandbox, "durable")
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        call = await new_call(own, tenant.person_uuid)
        await own.add_attempt(call.uuid)
        completed = await own.complete_call(call.uuid, COMPLETE)
    sandbox.restart()
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        assert await own.find_call(call.uuid, call.requested_at) == completed
        with pytest.raises(ConflictError):
            await own.complete_call(call.uuid, COMPLETE)
        with pytest.raises(ConflictError):
            await own.create_call(
                managed_call(tenant.person_uuid).model_copy(update={"uuid": call.uuid})
            )
    assert sandbox.effects(str(call.uuid)) == {
        "create": 1,
        "add-attempt": 1,
        "complete": 1,
        "cancel": 0,
        "expire": 0,
    }


# --- injected faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_is_an_internal_server_error_and_nothing_is_applied(
    client: TapRaiseClient, sandbox: SandboxServer, clean_faults: None, status: int
) -> None:
    sandbox.set_faults([{"endpoint": "create", "next": [str(status)]}])
    request = managed_call()
    with pytest.raises(InternalServerError) as raised:
        await client.create_call(request)
    assert raised.value.status_code == status
    assert sandbox.stored_call(str(request.uuid)) is None
    assert sandbox.effects(str(request.uuid))["create"] == 0
    # The fault was one-off: the same request now goes through.
    assert (await client.create_call(request)).uuid == request.uuid


async def test_a_server_error_on_an_action_leaves_the_call_unchanged(
    client: TapRaiseClient, sandbox: SandboxServer, clean_faults: None
) -> None:
    call = await new_call(client)
    sandbox.set_faults([{"endpoint": "complete", "next": ["500"]}])
    with pytest.raises(InternalServerError, match="Internal server error"):
        await client.complete_call(call.uuid, COMPLETE)
    assert sandbox.stored_call(str(call.uuid))["status"] == "requested"  # type: ignore[index]


async def test_rate_limiting_is_a_rate_limit_error_carrying_retry_after(
    client: TapRaiseClient, sandbox: SandboxServer, clean_faults: None
) -> None:
    call = await new_call(client)
    sandbox.set_faults([{"endpoint": "add-attempt", "next": ["429"], "retryAfterSeconds": 7}])
    with pytest.raises(RateLimitError) as raised:
        await client.add_attempt(call.uuid)
    assert raised.value.status_code == 429 and raised.value.retry_after == 7.0
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 0


@pytest.mark.parametrize("endpoint", ["create", "add-attempt"])
async def test_a_late_answer_is_a_timeout_although_the_change_was_applied(
    client: TapRaiseClient,
    sandbox: SandboxServer,
    home: ServiceAccount,
    clean_faults: None,
    endpoint: str,
) -> None:
    request = managed_call()
    call_uuid = request.uuid
    assert call_uuid is not None
    if endpoint != "create":
        await client.create_call(request)
    sandbox.set_faults(
        [{"endpoint": endpoint, "next": ["late"], "lateDelaySeconds": LATE_DELAY_SECONDS}]
    )
    started = time.monotonic()
    async with TapRaiseClient(sandbox.base_url, home, timeout=IMPATIENT) as impatient:
        with pytest.raises(APITimeoutError):
            if endpoint == "create":
                await impatient.create_call(request)
            else:
                await impatient.add_attempt(call_uuid)
    assert time.monotonic() - started < LATE_DELAY_SECONDS
    assert sandbox.effects(str(call_uuid))[endpoint] == 1
    (logged,) = sandbox.requests(call_uuid=str(call_uuid), endpoint=endpoint)
    assert logged["status"] in (200, 201) and logged["fault"] == "late"


async def test_a_create_applied_late_is_not_found_until_it_is_applied(
    client: TapRaiseClient, sandbox: SandboxServer, home: ServiceAccount, clean_faults: None
) -> None:
    request = managed_call()
    assert request.uuid is not None
    sandbox.set_faults(
        [
            {
                "endpoint": "create",
                "next": ["late_apply"],
                "lateApplyDelaySeconds": LATE_DELAY_SECONDS,
            }
        ]
    )
    started = time.monotonic()
    async with TapRaiseClient(sandbox.base_url, home, timeout=IMPATIENT) as impatient:
        with pytest.raises(APITimeoutError):
            await impatient.create_call(request)
    # The look a retry makes before creating again: the call is not there yet.
    assert await client.find_call(request.uuid, request.requested_at) is None
    assert sandbox.effects(str(request.uuid))["create"] == 0
    while sandbox.stored_call(str(request.uuid)) is None:
        assert time.monotonic() - started < LATE_DELAY_SECONDS + 5
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= LATE_DELAY_SECONDS
    found = await client.find_call(request.uuid, request.requested_at)
    assert found is not None and found.uuid == request.uuid
    (logged,) = sandbox.requests(call_uuid=str(request.uuid), endpoint="create")
    assert logged["status"] == 201 and logged["fault"] == "late_apply"


async def test_latency_delays_the_answer_but_it_still_succeeds(
    client: TapRaiseClient, sandbox: SandboxServer, clean_faults: None
) -> None:
    sandbox.set_faults([{"endpoint": "cancel", "next": ["latency"], "latencySeconds": 0.4}])
    call = await new_call(client)
    started = time.monotonic()
    cancelled = await client.cancel_call(call.uuid)
    assert time.monotonic() - started >= 0.4
    assert cancelled.status is CallStatus.CANCELLED
    (logged,) = sandbox.requests(call_uuid=str(call.uuid), endpoint="cancel")
    assert logged["fault"] == "latency" and logged["status"] == 200


async def test_latency_beyond_the_read_timeout_is_a_timeout(
    sandbox: SandboxServer, clean_faults: None
) -> None:
    sandbox.set_faults([{"endpoint": "list", "next": ["latency"], "latencySeconds": 1.5}])
    account = demo_account(sandbox)
    async with TapRaiseClient(sandbox.base_url, account, timeout=IMPATIENT) as impatient:
        with pytest.raises(APITimeoutError):
            await impatient.list_calls_page(first=1)


async def test_every_status_error_shows_the_servers_message(client: TapRaiseClient) -> None:
    with pytest.raises(APIStatusError) as raised:
        await client.cancel_call(uuid.uuid4())
    assert "Call is not found" in str(raised.value)
    assert str(raised.value).startswith("TapRaise answered 404 Not Found on PUT /api/v1/calls/")


async def test_find_call_takes_one_request_however_many_calls_came_after_it(
    crowd_client: TapRaiseClient, crowd: Crowd, sandbox: SandboxServer
) -> None:
    oldest = crowd.newest_first[-1]
    listed = {call.uuid: call async for call in crowd_client.list_calls()}
    before = len(sandbox.requests(endpoint="list", limit=100_000))
    found = await crowd_client.find_call(oldest, listed[uuid.UUID(oldest)].requested_at)
    assert found is not None and str(found.uuid) == oldest
    # 262 calls were requested after it: paging backward finds it on the first page.
    assert len(sandbox.requests(endpoint="list", limit=100_000)) == before + 1


async def test_find_call_reads_a_small_page_of_the_calls_requested_since(
    crowd_client: TapRaiseClient, crowd: Crowd, sandbox: SandboxServer
) -> None:
    middle = crowd.newest_first[len(crowd.newest_first) // 2]
    listed = {call.uuid: call async for call in crowd_client.list_calls()}
    before = len(sandbox.requests(endpoint="list", limit=100_000))
    found = await crowd_client.find_call(middle, listed[uuid.UUID(middle)].requested_at)
    assert found is not None and str(found.uuid) == middle
    looks = sandbox.requests(endpoint="list", limit=100_000)
    assert len(looks) == before + 1
    assert "last=5" in looks[-1]["query"]  # one small page, not every call requested since


async def test_find_call_pages_through_calls_requested_at_the_same_instant(
    sandbox: SandboxServer,
) -> None:
    tenant = add_tenant(sandbox, "same-instant", persons=1)
    instant = now() - timedelta(hours=1)
    requests = [managed_call(tenant.person_uuid, requested_at=instant) for _ in range(40)]
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        for request in requests:
            await own.create_call(request)
        # Created last, so listed among the newest of the 40 that share the instant.
        for request in (requests[0], requests[-1]):
            assert request.uuid is not None
            found = await own.find_call(request.uuid, instant)
            assert found is not None and found.uuid == request.uuid


async def test_find_call_widens_when_tapraise_kept_an_earlier_time(
    client: TapRaiseClient,
) -> None:
    call = await new_call(client)
    # A caller whose requestedAt is half a second later than TapRaise's (a coarser clock).
    found = await client.find_call(call.uuid, call.requested_at + timedelta(milliseconds=500))
    assert found is not None and found.uuid == call.uuid


# --- find_call when requestedAt is not the call's -----------------------------------------------


@dataclass(frozen=True)
class History:
    """A call requested 300 days ago among 510 others, before, between and after.

    ``neighbour`` is the last of the 30 calls requested in the 9 seconds after ``target``.
    """

    account: ServiceAccount
    target: Call
    neighbour: Call
    requested: list[datetime]


@pytest_asyncio.fixture(scope="module")
async def history(sandbox: SandboxServer) -> History:
    tenant = add_tenant(sandbox, "history", persons=1)
    truth = now() - timedelta(days=300)
    times = (
        [truth - timedelta(days=k) for k in range(1, 151)]  # older than the call
        + [truth + timedelta(milliseconds=300 * k) for k in range(1, 31)]  # its first 9 s
        + [truth + timedelta(seconds=10, minutes=25 * k) for k in range(1, 151)]  # 3 days
        + [truth + timedelta(days=3) + timedelta(hours=31 * k) for k in range(1, 151)]
        + [truth + timedelta(days=200, seconds=10 * k) for k in range(20)]  # at 200 days
        + [now() - timedelta(minutes=k) for k in range(1, 11)]  # recent
    )
    target = managed_call(tenant.person_uuid, requested_at=truth)
    others = [managed_call(tenant.person_uuid, requested_at=moment) for moment in times]
    async with TapRaiseClient(sandbox.base_url, tenant.account) as own:
        created = [await own.create_call(target)]
        for start in range(0, len(others), 25):
            batch = others[start : start + 25]
            created += await asyncio.gather(*(own.create_call(r) for r in batch))
    neighbour = created[1 + 150 + 29]
    assert neighbour.requested_at == truth + timedelta(seconds=9)
    return History(tenant.account, created[0], neighbour, [truth, *times])


def list_requests(sandbox: SandboxServer, account: ServiceAccount) -> list[dict[str, Any]]:
    return [
        entry
        for entry in sandbox.requests(endpoint="list", limit=100_000)
        if entry["accountEmail"] == account.email
    ]


def find_bound(history: History, requested_at: datetime) -> int:
    """The documented worst case: 7 + ceil(M / 100), M the calls requested in the span."""
    span = [
        moment
        for moment in history.requested
        if requested_at - FIND_WINDOWS[-1] < moment <= requested_at + FIND_LATER
    ]
    return 1 + len(FIND_WINDOWS) + -(-len(span) // MAX_PAGE_SIZE)


async def counted_find(
    sandbox: SandboxServer, history: History, call_uuid: uuid.UUID, requested_at: datetime
) -> tuple[Call | None, int]:
    before = len(list_requests(sandbox, history.account))
    async with TapRaiseClient(sandbox.base_url, history.account) as own:
        found = await own.find_call(call_uuid, requested_at)
    return found, len(list_requests(sandbox, history.account)) - before


async def test_find_call_at_the_right_instant_takes_one_small_request(
    sandbox: SandboxServer, history: History
) -> None:
    found, requests = await counted_find(
        sandbox, history, history.target.uuid, history.target.requested_at
    )
    assert found == history.target and requests == 1
    assert "last=5" in list_requests(sandbox, history.account)[-1]["query"]


@pytest.mark.parametrize(
    "later", [timedelta(seconds=10), timedelta(days=3), timedelta(days=200)], ids=str
)
async def test_find_call_finds_a_call_requested_before_the_time_given(
    sandbox: SandboxServer, history: History, later: timedelta
) -> None:
    requested_at = history.target.requested_at + later
    found, requests = await counted_find(sandbox, history, history.target.uuid, requested_at)
    assert found == history.target
    assert 1 < requests <= find_bound(history, requested_at)


@pytest.mark.parametrize("earlier", [timedelta(0), timedelta(minutes=4)], ids=str)
async def test_find_call_finds_a_call_requested_a_little_after_the_time_given(
    sandbox: SandboxServer, history: History, earlier: timedelta
) -> None:
    # 29 calls were requested between the time given and the call's own: past the first page.
    requested_at = history.target.requested_at - earlier
    found, requests = await counted_find(sandbox, history, history.neighbour.uuid, requested_at)
    assert found == history.neighbour
    assert requests == 2 <= find_bound(history, requested_at)


async def test_find_call_gives_up_within_the_bound(
    sandbox: SandboxServer, history: History
) -> None:
    requested_at = history.target.requested_at + timedelta(days=200)
    found, requests = await counted_find(sandbox, history, uuid.uuid4(), requested_at)
    assert found is None
    bound = find_bound(history, requested_at)
    # Every window was looked at; the 300 or so calls in the span cost a few pages more.
    assert 1 + len(FIND_WINDOWS) < requests <= bound < 15


async def test_find_call_does_not_look_beyond_the_widest_window(
    sandbox: SandboxServer, history: History
) -> None:
    requested_at = history.target.requested_at + FIND_WINDOWS[-1] + timedelta(seconds=1)
    found, requests = await counted_find(sandbox, history, history.target.uuid, requested_at)
    assert found is None
    assert requests <= find_bound(history, requested_at)
