"""The TapRaise activities are idempotent and classify failures for Temporal's retries.

Each activity runs in an `ActivityEnvironment` (a real activity context without a worker) with a
real client to the sandbox. A retry is simulated by running the activity again with the attempt
number Temporal would give it; "exactly once" is checked on the sandbox's applied effects and
request log, not on what the activity returned. The calls belong to an organization of this
module's own, so the demo account's call list, which other modules page through, stays as they
left it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.actions import (
    AddAttemptInput,
    CallRef,
    CancelCallInput,
    CompleteCallInput,
    ExpireCallInput,
    TapRaiseActivities,
    same_attempt,
)
from sandbox.seed import ALL_ACTIONS, FOREIGN_PERSON_UUID
from tapraise import (
    Call,
    CallResult,
    CallStatus,
    CallType,
    CancelCallRequest,
    CompleteCallRequest,
    CreateCallRequest,
    ExpireCallRequest,
    ServiceAccount,
    TapRaiseClient,
)
from tests.helpers import account_of, demo_account, fresh_private_key_pem, now
from tests.sandbox_fixture import SandboxServer
from workflows import errors

pytestmark = pytest.mark.timeout(60)

HOME_ORGANIZATION = str(uuid.uuid4())
HOME_MAX_ATTEMPTS = 3
PERSON = str(uuid.uuid4())
USER = uuid.UUID("6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b")
IMPATIENT = httpx.Timeout(5.0, read=0.5)
LATE_DELAY_SECONDS = 2.0
COMPLETE = CompleteCallRequest(result=CallResult(result_code="confirmed", duration=61.5))

In = TypeVar("In")
Out = TypeVar("Out")


# --- building blocks ------------------------------------------------------------------------------


async def run(fn: Callable[[In], Awaitable[Out]], arg: In, *, attempt: int = 1) -> Out:
    """Run an activity as Temporal's try number ``attempt`` would."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    return await env.run(fn, arg)


async def failure(
    fn: Callable[[In], Awaitable[object]], arg: In, *, attempt: int = 1
) -> ApplicationError:
    """Run an activity that must fail, and return the error Temporal would see."""
    with pytest.raises(ApplicationError) as raised:
        await run(fn, arg, attempt=attempt)
    return raised.value


def new_request(person_uuid: str = PERSON) -> CreateCallRequest:
    return CreateCallRequest(
        uuid=uuid.uuid4(),
        person_uuid=uuid.UUID(person_uuid),
        requested_at=now() - timedelta(minutes=1),
        type=CallType.WINBACK,
    )


def ref(call: Call) -> CallRef:
    return CallRef(call_uuid=call.uuid, requested_at=call.requested_at)


def complete_input(call: Call) -> CompleteCallInput:
    return CompleteCallInput(call_uuid=call.uuid, requested_at=call.requested_at, request=COMPLETE)


def cancel_input(call: Call) -> CancelCallInput:
    return CancelCallInput(
        call_uuid=call.uuid, requested_at=call.requested_at, request=CancelCallRequest()
    )


def expire_input(call: Call) -> ExpireCallInput:
    return ExpireCallInput(
        call_uuid=call.uuid, requested_at=call.requested_at, request=ExpireCallRequest()
    )


def attempt_input(call: Call, user_uuid: uuid.UUID | None = USER) -> AddAttemptInput:
    return AddAttemptInput(
        call_uuid=call.uuid,
        requested_at=call.requested_at,
        attempt_at=datetime.now(UTC) - timedelta(seconds=1),
        user_uuid=user_uuid,
    )


async def finish(acts: TapRaiseActivities, action: str, call: Call, *, attempt: int = 1) -> Call:
    """Run the activity that moves ``call`` to a final status through ``action``."""
    if action == "complete":
        return await run(acts.complete_call, complete_input(call), attempt=attempt)
    if action == "cancel":
        return await run(acts.cancel_call, cancel_input(call), attempt=attempt)
    return await run(acts.expire_call, expire_input(call), attempt=attempt)


async def finish_failure(
    acts: TapRaiseActivities, action: str, call: Call, *, attempt: int = 1
) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await finish(acts, action, call, attempt=attempt)
    return raised.value


STATUS_OF = {
    "complete": CallStatus.COMPLETED,
    "cancel": CallStatus.CANCELLED,
    "expire": CallStatus.EXPIRED,
}


def assert_retryable(error: ApplicationError, kind: str) -> None:
    assert error.type == kind
    assert not error.non_retryable


def assert_final(error: ApplicationError, kind: str) -> None:
    assert error.type == kind
    assert error.non_retryable


@pytest.fixture(scope="module")
def home(sandbox: SandboxServer) -> ServiceAccount:
    """A service account for ``HOME_ORGANIZATION``, which owns ``PERSON``."""
    sandbox.add_organization("Activity Tests Fund", HOME_MAX_ATTEMPTS, uuid=HOME_ORGANIZATION)
    sandbox.add_person(HOME_ORGANIZATION, uuid=PERSON, first_name="Home")
    credentials = sandbox.add_service_account(
        f"activity-tests-{uuid.uuid4().hex[:8]}@example.org",
        [HOME_ORGANIZATION],
        list(ALL_ACTIONS),
    )
    return account_of(credentials)


@pytest_asyncio.fixture
async def client(sandbox: SandboxServer, home: ServiceAccount) -> AsyncIterator[TapRaiseClient]:
    async with TapRaiseClient(sandbox.base_url, home) as own:
        yield own


@pytest.fixture
def acts(client: TapRaiseClient) -> TapRaiseActivities:
    return TapRaiseActivities(client)


@pytest_asyncio.fixture
async def impatient(
    sandbox: SandboxServer, home: ServiceAccount
) -> AsyncIterator[TapRaiseActivities]:
    """Activities whose client gives up reading an answer after half a second."""
    async with TapRaiseClient(sandbox.base_url, home, timeout=IMPATIENT) as hasty:
        yield TapRaiseActivities(hasty)


def arrive_late(sandbox: SandboxServer, endpoint: str) -> None:
    """The next request to ``endpoint`` is applied, but answered after the client gave up."""
    sandbox.set_faults(
        [{"endpoint": endpoint, "next": ["late"], "lateDelaySeconds": LATE_DELAY_SECONDS}]
    )


async def new_call(client: TapRaiseClient, person_uuid: str = PERSON) -> Call:
    return await client.create_call(new_request(person_uuid))


# --- create_call --------------------------------------------------------------------------------


async def test_creating_twice_with_the_same_uuid_adopts_the_existing_call(
    acts: TapRaiseActivities, sandbox: SandboxServer
) -> None:
    request = new_request()
    first = await run(acts.create_call, request)
    second = await run(acts.create_call, request, attempt=2)
    assert first.created and not second.created
    assert second.call == first.call
    assert sandbox.effects(str(request.uuid))["create"] == 1
    statuses = [r["status"] for r in sandbox.requests(str(request.uuid), endpoint="create")]
    assert statuses == [201, 409]


async def test_create_whose_answer_came_late_is_adopted_by_the_retry(
    acts: TapRaiseActivities,
    impatient: TapRaiseActivities,
    sandbox: SandboxServer,
    clean_faults: None,
) -> None:
    request = new_request()
    arrive_late(sandbox, "create")
    assert_retryable(await failure(impatient.create_call, request), errors.TAPRAISE_TIMEOUT)
    retried = await run(acts.create_call, request, attempt=2)
    assert not retried.created
    assert retried.call.uuid == request.uuid and retried.call.status is CallStatus.REQUESTED
    assert sandbox.effects(str(request.uuid))["create"] == 1


async def test_create_refused_by_a_server_error_is_created_by_the_retry(
    acts: TapRaiseActivities, sandbox: SandboxServer, clean_faults: None
) -> None:
    request = new_request()
    sandbox.set_faults([{"endpoint": "create", "next": ["500"]}])
    assert_retryable(await failure(acts.create_call, request), errors.TAPRAISE_UNAVAILABLE)
    retried = await run(acts.create_call, request, attempt=2)
    assert retried.created
    assert sandbox.effects(str(request.uuid))["create"] == 1


async def test_create_without_a_uuid_is_refused_before_sending(
    acts: TapRaiseActivities, sandbox: SandboxServer
) -> None:
    request = new_request().model_copy(update={"uuid": None, "notes": str(uuid.uuid4())})
    before = len(sandbox.requests(endpoint="create", limit=100_000))
    assert_final(await failure(acts.create_call, request), errors.TAPRAISE_BAD_REQUEST)
    assert len(sandbox.requests(endpoint="create", limit=100_000)) == before


async def test_create_of_a_uuid_taken_in_an_organization_out_of_sight_is_final(
    acts: TapRaiseActivities, sandbox: SandboxServer
) -> None:
    organization = sandbox.add_organization(f"Elsewhere {uuid.uuid4()}", 5)
    person = sandbox.add_person(organization["uuid"])
    credentials = sandbox.add_service_account(
        f"elsewhere-{uuid.uuid4().hex[:8]}@example.org", [organization["uuid"]], list(ALL_ACTIONS)
    )
    async with TapRaiseClient(sandbox.base_url, account_of(credentials)) as elsewhere:
        taken = await new_call(elsewhere, person["uuid"])
    clash = new_request().model_copy(update={"uuid": taken.uuid})
    assert_final(await failure(acts.create_call, clash), errors.CALL_EXISTS_BUT_NOT_VISIBLE)
    assert sandbox.effects(str(taken.uuid))["create"] == 1


# --- add_attempt --------------------------------------------------------------------------------


async def test_add_attempt_whose_answer_came_late_is_not_resent_by_the_retry(
    acts: TapRaiseActivities,
    impatient: TapRaiseActivities,
    client: TapRaiseClient,
    sandbox: SandboxServer,
    clean_faults: None,
) -> None:
    call = await new_call(client)
    data = attempt_input(call)
    arrive_late(sandbox, "add-attempt")
    assert_retryable(await failure(impatient.add_attempt, data), errors.TAPRAISE_TIMEOUT)
    retried = await run(acts.add_attempt, data, attempt=2)
    assert retried.attempts_count == 1
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 1
    stored = sandbox.stored_call(str(call.uuid))
    assert stored is not None and len(stored["attempts"]) == 1
    assert len(sandbox.requests(str(call.uuid), endpoint="add-attempt")) == 1


async def test_add_attempt_without_a_user_is_recognised_by_its_time_on_retry(
    acts: TapRaiseActivities,
    impatient: TapRaiseActivities,
    client: TapRaiseClient,
    sandbox: SandboxServer,
    clean_faults: None,
) -> None:
    call = await new_call(client)
    data = attempt_input(call, user_uuid=None)
    arrive_late(sandbox, "add-attempt")
    assert_retryable(await failure(impatient.add_attempt, data), errors.TAPRAISE_TIMEOUT)
    assert (await run(acts.add_attempt, data, attempt=2)).attempts_count == 1
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 1


async def test_add_attempt_that_never_reached_tapraise_is_sent_by_the_retry(
    acts: TapRaiseActivities, client: TapRaiseClient, sandbox: SandboxServer, clean_faults: None
) -> None:
    call = await new_call(client)
    data = attempt_input(call)
    sandbox.set_faults([{"endpoint": "add-attempt", "next": ["500"]}])
    assert_retryable(await failure(acts.add_attempt, data), errors.TAPRAISE_UNAVAILABLE)
    retried = await run(acts.add_attempt, data, attempt=2)
    assert retried.attempts_count == 1
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 1
    logged = sandbox.requests(str(call.uuid), endpoint="add-attempt")
    assert [(r["status"], r["fault"]) for r in logged] == [(500, "500"), (200, None)]


async def test_a_second_attempt_at_another_time_is_recorded_on_a_retry_try(
    acts: TapRaiseActivities, client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    await run(acts.add_attempt, attempt_input(call))
    later = attempt_input(call).model_copy(update={"attempt_at": datetime.now(UTC)})
    assert (await run(acts.add_attempt, later, attempt=2)).attempts_count == 2
    assert sandbox.effects(str(call.uuid))["add-attempt"] == 2


async def test_add_attempt_beyond_the_maximum_is_a_final_bad_request(
    acts: TapRaiseActivities, client: TapRaiseClient
) -> None:
    call = await new_call(client)
    for _ in range(HOME_MAX_ATTEMPTS):
        await client.add_attempt(call.uuid)
    error = await failure(acts.add_attempt, attempt_input(call))
    assert_final(error, errors.TAPRAISE_BAD_REQUEST)
    assert f"the maximum of {HOME_MAX_ATTEMPTS}" in str(error)
    assert error.details == (HOME_MAX_ATTEMPTS,)  # what TapRaise holds: the call's real maximum


async def test_add_attempt_on_a_call_final_in_tapraise_names_its_state_and_sends_nothing(
    acts: TapRaiseActivities, client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    await client.cancel_call(call.uuid, CancelCallRequest())
    error = await failure(acts.add_attempt, attempt_input(call))
    assert_final(error, errors.CALL_IN_OTHER_FINAL_STATE)
    # The state, then the call as TapRaise holds it (its attempts and result are adopted).
    status, held = error.details
    assert status == "cancelled" and held["status"] == "cancelled" and held["uuid"]
    assert sandbox.requests(str(call.uuid), endpoint="add-attempt") == []


AT = datetime(2026, 3, 2, 10, 0, 0, 123000, tzinfo=UTC)
OTHER_USER = uuid.uuid4()


@pytest.mark.parametrize(
    ("at", "user", "other_at", "other_user", "same"),
    [
        (AT, USER, AT, USER, True),
        (AT, USER, AT + timedelta(microseconds=900), USER, True),  # TapRaise rounded the ms
        (AT, USER, AT - timedelta(microseconds=1000), USER, True),
        (AT, None, AT, USER, True),  # TapRaise filled in the user the report left out
        (AT, USER, AT, None, True),
        (AT, USER, AT, OTHER_USER, False),
        (AT, USER, AT + timedelta(milliseconds=2), USER, False),
        (AT, None, AT + timedelta(seconds=1), None, False),
    ],
)
def test_one_rule_tells_two_records_of_an_attempt_apart(
    at: datetime,
    user: uuid.UUID | None,
    other_at: datetime,
    other_user: uuid.UUID | None,
    same: bool,
) -> None:
    assert same_attempt(at, user, other_at, other_user) is same
    assert same_attempt(other_at, other_user, at, user) is same


async def test_add_attempt_retry_on_a_call_out_of_sight_is_a_final_not_found(
    acts: TapRaiseActivities,
) -> None:
    missing = AddAttemptInput(
        call_uuid=uuid.uuid4(), requested_at=now(), attempt_at=datetime.now(UTC)
    )
    assert_final(await failure(acts.add_attempt, missing, attempt=2), errors.TAPRAISE_NOT_FOUND)


# --- complete, cancel, expire -------------------------------------------------------------------


@pytest.mark.parametrize("action", ["complete", "cancel", "expire"])
async def test_repeating_a_final_action_succeeds_with_one_effect(
    acts: TapRaiseActivities, client: TapRaiseClient, sandbox: SandboxServer, action: str
) -> None:
    call = await new_call(client)
    done = await finish(acts, action, call)
    again = await finish(acts, action, call, attempt=2)
    assert done.status is STATUS_OF[action]
    assert again == done
    assert sandbox.effects(str(call.uuid))[action] == 1
    assert [r["status"] for r in sandbox.requests(str(call.uuid), endpoint=action)] == [200, 409]


@pytest.mark.parametrize("action", ["complete", "cancel", "expire"])
async def test_a_final_action_whose_answer_came_late_succeeds_on_retry(
    acts: TapRaiseActivities,
    impatient: TapRaiseActivities,
    client: TapRaiseClient,
    sandbox: SandboxServer,
    clean_faults: None,
    action: str,
) -> None:
    call = await new_call(client)
    arrive_late(sandbox, action)
    assert_retryable(await finish_failure(impatient, action, call), errors.TAPRAISE_TIMEOUT)
    retried = await finish(acts, action, call, attempt=2)
    assert retried.status is STATUS_OF[action]
    assert sandbox.effects(str(call.uuid))[action] == 1


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (first, then)
        for first in ("complete", "cancel", "expire")
        for then in ("complete", "cancel", "expire")
        if then != first
    ],
)
async def test_a_final_action_on_a_call_in_another_final_status_is_final_and_names_it(
    acts: TapRaiseActivities,
    client: TapRaiseClient,
    sandbox: SandboxServer,
    first: str,
    then: str,
) -> None:
    call = await new_call(client)
    await finish(acts, first, call)
    error = await finish_failure(acts, then, call)
    assert_final(error, errors.CALL_IN_OTHER_FINAL_STATE)
    assert error.details[0] == STATUS_OF[first].value
    assert sandbox.effects(str(call.uuid))[then] == 0


async def test_complete_refused_for_its_own_content_is_a_final_bad_request(
    acts: TapRaiseActivities, client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    too_early = CompleteCallRequest(
        result=CallResult(result_code="confirmed", completed_at=call.requested_at - timedelta(1))
    )
    data = CompleteCallInput(call_uuid=call.uuid, requested_at=call.requested_at, request=too_early)
    assert_final(await failure(acts.complete_call, data), errors.TAPRAISE_BAD_REQUEST)
    assert sandbox.effects(str(call.uuid))["complete"] == 0


@pytest.mark.parametrize("action", ["complete", "cancel", "expire"])
async def test_a_final_action_on_an_unknown_call_is_a_final_not_found(
    acts: TapRaiseActivities, action: str
) -> None:
    unknown = Call(
        uuid=uuid.uuid4(),
        status=CallStatus.REQUESTED,
        type=CallType.WINBACK,
        requested_at=now(),
        person_uuid=uuid.UUID(PERSON),
    )
    assert_final(await finish_failure(acts, action, unknown), errors.TAPRAISE_NOT_FOUND)


# --- find_call ----------------------------------------------------------------------------------


async def test_find_call_returns_the_call_or_none(
    acts: TapRaiseActivities, client: TapRaiseClient
) -> None:
    call = await new_call(client)
    assert await run(acts.find_call, ref(call)) == call
    missing = CallRef(call_uuid=uuid.uuid4(), requested_at=call.requested_at)
    assert await run(acts.find_call, missing) is None


# --- classification of TapRaise failures --------------------------------------------------------


async def test_forbidden_is_final(acts: TapRaiseActivities) -> None:
    error = await failure(acts.create_call, new_request(FOREIGN_PERSON_UUID))
    assert_final(error, errors.TAPRAISE_FORBIDDEN)
    assert "may not create calls for this person" in str(error)


async def test_expire_by_an_account_not_allowed_to_expire_is_retried(
    client: TapRaiseClient, sandbox: SandboxServer
) -> None:
    call = await new_call(client)
    credentials = sandbox.add_service_account(
        f"no-expire-{uuid.uuid4().hex[:8]}@example.org",
        [HOME_ORGANIZATION],
        [action for action in ALL_ACTIONS if action != "expire"],
    )
    async with TapRaiseClient(sandbox.base_url, account_of(credentials)) as limited:
        error = await finish_failure(TapRaiseActivities(limited), "expire", call)
    # A 403 on a later action is a permission being changed, not a verdict on the call.
    assert_retryable(error, errors.TAPRAISE_FORBIDDEN)
    assert errors.TAPRAISE_FORBIDDEN not in errors.NON_RETRYABLE
    assert "may not perform 'expire'" in str(error)
    assert sandbox.effects(str(call.uuid))["expire"] == 0


async def test_bad_request_is_final(acts: TapRaiseActivities) -> None:
    error = await failure(acts.create_call, new_request(str(uuid.uuid4())))
    assert_final(error, errors.TAPRAISE_BAD_REQUEST)
    assert "personUuid" in str(error)


async def test_rate_limiting_is_retried_after_the_delay_tapraise_asks_for(
    acts: TapRaiseActivities, sandbox: SandboxServer, clean_faults: None
) -> None:
    sandbox.set_faults([{"endpoint": "create", "next": ["429"], "retryAfterSeconds": 7}])
    error = await failure(acts.create_call, new_request())
    assert_retryable(error, errors.TAPRAISE_RATE_LIMITED)
    assert error.next_retry_delay == timedelta(seconds=7)


@pytest.mark.parametrize("fault", ["500", "503"])
async def test_server_errors_are_retried_as_unavailable(
    acts: TapRaiseActivities,
    client: TapRaiseClient,
    sandbox: SandboxServer,
    clean_faults: None,
    fault: str,
) -> None:
    call = await new_call(client)
    sandbox.set_faults([{"endpoint": "cancel", "next": [fault]}])
    assert_retryable(
        await failure(acts.cancel_call, cancel_input(call)), errors.TAPRAISE_UNAVAILABLE
    )
    assert sandbox.effects(str(call.uuid))["cancel"] == 0


async def test_a_lost_answer_on_lookup_is_retried_as_a_timeout(
    impatient: TapRaiseActivities,
    client: TapRaiseClient,
    sandbox: SandboxServer,
    clean_faults: None,
) -> None:
    call = await new_call(client)
    arrive_late(sandbox, "list")
    assert_retryable(await failure(impatient.find_call, ref(call)), errors.TAPRAISE_TIMEOUT)


@pytest_asyncio.fixture
async def impostor(sandbox: SandboxServer) -> AsyncIterator[TapRaiseActivities]:
    """Activities whose token is signed with a key TapRaise does not know for its key id."""
    account = demo_account(sandbox, fresh_private_key_pem())
    async with TapRaiseClient(sandbox.base_url, account) as wrong:
        yield TapRaiseActivities(wrong)


@pytest.mark.parametrize("attempt", [1, 3, 50])
async def test_unauthorized_is_never_final(
    impostor: TapRaiseActivities, sandbox: SandboxServer, attempt: int
) -> None:
    request = new_request()
    error = await failure(impostor.create_call, request, attempt=attempt)
    assert_retryable(error, errors.TAPRAISE_UNAUTHORIZED)
    assert errors.TAPRAISE_UNAUTHORIZED not in errors.NON_RETRYABLE
    assert sandbox.stored_call(str(request.uuid)) is None
