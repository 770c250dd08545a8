"""Validation and wire format of the TapRaise models."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from tapraise import models

pytestmark = pytest.mark.timeout(30)

PERSON = "f5e2ba11-1786-4ba9-bd5a-0d99317f4706"
REQUESTED_AT = "2025-05-17T12:36:18.174Z"

# The call object as the published API reference shows it in every call response.
EXAMPLE_CALL: dict[str, Any] = {
    "uuid": "5cf67f69-34d0-46fe-b904-20d56248a844",
    "status": "requested",
    "requestedAt": "2025-05-17T12:36:18.174Z",
    "externalMetadata": {
        "applicationName": "basicall",
        "referenceId": "ref_1234567890",
        "agentReferenceId": "agent_1234567890",
        "statusCode": "completed",
        "statusDescription": "The call was completed successfully",
        "additionalProperties": {"foo": "bar"},
    },
    "attempts": [
        {
            "userUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
            "attemptAt": "2025-05-17T12:36:18.174Z",
            "createdAt": "2025-05-17T12:36:18.174Z",
        }
    ],
    "attemptsCount": 1,
    "result": {
        "resultCode": "confirmed",
        "completedAt": "2025-05-17T12:36:18.174Z",
        "notes": "text",
        "duration": 120.23,
        "donorRetentionRating": 7,
    },
    "lastUpdatedAt": "2025-05-17T12:36:18.174Z",
    "cancelledAt": "2025-05-17T12:36:18.174Z",
    "completedAt": "2025-05-17T12:36:18.174Z",
    "expiredAt": "2025-05-17T12:36:18.174Z",
    "notes": "text",
    "personUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "relatedCaseUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "callingOrganizationUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "type": "happy_call",
}

EXAMPLE_PAGE: dict[str, Any] = {
    "edges": [{"node": EXAMPLE_CALL, "cursor": "48094b0e-15b3-430f-ab5a-16ecf12b9171"}],
    "pageInfo": {
        "startCursor": "48094b0e-15b3-430f-ab5a-16ecf12b9171",
        "endCursor": "494d74df-6fbc-46a3-811e-1c17230340a1",
        "hasPreviousPage": True,
        "hasNextPage": False,
    },
}

# The create body of the published reference (an externally managed call).
EXAMPLE_CREATE: dict[str, Any] = {
    "uuid": "82b431f0-f401-4afd-b6db-9d1d751232d9",
    "status": "requested",
    "requestedAt": "2025-05-17T12:36:18.174Z",
    "externalMetadata": {
        "applicationName": "basicall",
        "referenceId": "ref_1234567890",
        "agentReferenceId": "agent_1234567890",
        "statusCode": "completed",
        "statusDescription": "The call was completed successfully",
        "additionalProperties": '{"foo": "bar"}',
    },
    "attempts": [
        {
            "createdAt": "2025-05-17T12:36:18.174Z",
            "userUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
        }
    ],
    "result": {
        "resultCode": "confirmed",
        "completedAt": "2023-05-01T00:00:00.000Z",
        "notes": "text",
        "duration": 120.23,
        "donorRetentionRating": 7,
    },
    "requestedByUserUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "cancelledAt": "2023-05-01T00:00:00.000Z",
    "completedAt": "2023-05-01T00:00:00.000Z",
    "notes": "text",
    "personUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "relatedCaseUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "callingOrganizationUuid": "f5e2ba11-1786-4ba9-bd5a-0d99317f4706",
    "type": "verification",
}

MANAGED = {"personUuid": PERSON, "requestedAt": REQUESTED_AT, "type": "verification"}
EXTERNAL = {
    "personUuid": PERSON,
    "requestedAt": REQUESTED_AT,
    "externalMetadata": {"applicationName": "dialer", "referenceId": "r-1"},
}
RESULT = {"resultCode": "confirmed"}


# --- responses --------------------------------------------------------------------------------


def test_example_call_response_parses_into_snake_case_attributes() -> None:
    call = models.Call.model_validate(EXAMPLE_CALL)

    assert call.uuid == UUID("5cf67f69-34d0-46fe-b904-20d56248a844")
    assert call.status is models.CallStatus.REQUESTED
    assert call.type is models.CallType.HAPPY_CALL
    assert call.requested_at == datetime(2025, 5, 17, 12, 36, 18, 174000, tzinfo=UTC)
    assert call.external_metadata is not None
    assert call.external_metadata.additional_properties == {"foo": "bar"}
    assert call.attempts[0].user_uuid == UUID(PERSON)
    assert call.attempts_count == 1
    assert call.result is not None
    assert call.result.result_code == "confirmed"
    assert call.result.duration == pytest.approx(120.23)
    assert call.result.donor_retention_rating == 7
    assert call.person_uuid == UUID(PERSON)
    assert not call.is_final


def test_example_list_response_parses_into_a_page() -> None:
    page = models.CallPage.model_validate_json(json.dumps(EXAMPLE_PAGE))

    assert [c.uuid for c in page.calls] == [UUID(EXAMPLE_CALL["uuid"])]
    assert page.edges[0].cursor == "48094b0e-15b3-430f-ab5a-16ecf12b9171"
    assert page.page_info.end_cursor == "494d74df-6fbc-46a3-811e-1c17230340a1"
    assert page.page_info.has_previous_page is True
    assert page.page_info.has_next_page is False


def test_response_ignores_unknown_fields_at_every_level() -> None:
    body = json.loads(json.dumps(EXAMPLE_CALL))
    body["somethingNew"] = 1
    body["result"]["extra"] = "x"
    body["attempts"][0]["channel"] = "phone"

    call = models.Call.model_validate(body)

    assert not hasattr(call, "somethingNew")
    assert call.result is not None


def test_response_with_only_required_fields_gets_empty_defaults() -> None:
    call = models.Call.model_validate(
        {
            "uuid": "5cf67f69-34d0-46fe-b904-20d56248a844",
            "status": "expired",
            "type": "winback",
            "requestedAt": REQUESTED_AT,
            "personUuid": PERSON,
            "externalMetadata": None,
            "result": None,
        }
    )

    assert call.attempts == []
    assert call.attempts_count == 0
    assert call.result is None
    assert call.is_final


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-05-17T12:36:18.174Z", datetime(2025, 5, 17, 12, 36, 18, 174000, tzinfo=UTC)),
        ("2025-05-17T14:36:18.174+02:00", datetime(2025, 5, 17, 12, 36, 18, 174000, tzinfo=UTC)),
        ("2025-05-17T12:36:18Z", datetime(2025, 5, 17, 12, 36, 18, tzinfo=UTC)),
    ],
)
def test_response_timestamps_accept_z_or_offsets_and_are_normalised_to_utc(
    text: str, expected: datetime
) -> None:
    call = models.Call.model_validate({**EXAMPLE_CALL, "requestedAt": text})

    assert call.requested_at == expected
    assert call.requested_at.utcoffset() == timedelta(0)


def test_call_round_trips_through_its_own_json() -> None:
    call = models.Call.model_validate(EXAMPLE_CALL)

    dumped = json.loads(call.model_dump_json())

    assert dumped["requestedAt"] == "2025-05-17T12:36:18.174Z"
    assert "personUuid" in dumped
    assert models.Call.model_validate_json(call.model_dump_json()) == call


def test_mark_processed_error_body_parses() -> None:
    body = {"errors": [{"entityName": "call", "entityUuid": PERSON, "message": "not found"}]}

    errors = models.MarkProcessedErrors.model_validate(body)

    assert errors.errors[0].message == "not found"


# --- create: the two management modes ---------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(MANAGED, id="managed-minimal"),
        pytest.param(
            {
                **MANAGED,
                "uuid": "82b431f0-f401-4afd-b6db-9d1d751232d9",
                "notes": "n",
                "requestedByUserUuid": PERSON,
                "relatedCaseUuid": PERSON,
                "callingOrganizationUuid": PERSON,
            },
            id="managed-all-optional",
        ),
        pytest.param(EXTERNAL, id="external-minimal"),
        pytest.param({**EXTERNAL, "status": "completed", "result": RESULT}, id="external-done"),
        pytest.param(
            {
                **EXTERNAL,
                "status": "cancelled",
                "cancelledAt": REQUESTED_AT,
                "attempts": [{"userUuid": PERSON, "attemptAt": REQUESTED_AT}],
            },
            id="external-cancelled-with-attempts",
        ),
        pytest.param({**EXTERNAL, "status": "requested", "result": RESULT}, id="external-result"),
    ],
)
def test_create_accepts_valid_bodies_of_both_modes(body: dict[str, Any]) -> None:
    models.CreateCallRequest.model_validate(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**MANAGED, "type": None}, "type is required when externalMetadata is absent"),
        ({**MANAGED, "status": "requested"}, "status is not allowed when externalMetadata"),
        ({**MANAGED, "result": RESULT}, "result is not allowed when externalMetadata"),
        ({**MANAGED, "attempts": []}, "attempts is not allowed when externalMetadata"),
        ({**MANAGED, "completedAt": REQUESTED_AT}, "completedAt is not allowed"),
        ({**MANAGED, "cancelledAt": REQUESTED_AT}, "cancelledAt is not allowed"),
        ({**EXTERNAL, "type": "winback"}, "type is not allowed when externalMetadata is given"),
        ({**EXTERNAL, "status": "completed"}, "result is required when status is completed"),
        ({**MANAGED, "status": "bogus"}, "status"),
        ({**MANAGED, "type": "robocall"}, "type"),
        ({**MANAGED, "personUuid": "not-a-uuid"}, "personUuid"),
        ({**MANAGED, "relatedCaseUuid": "1234"}, "relatedCaseUuid"),
        ({**MANAGED, "requestedAt": "2025-05-17T12:36:18"}, "requestedAt"),
        ({"personUuid": PERSON, "type": "verification"}, "requestedAt"),
        ({**MANAGED, "personId": PERSON}, "personId"),
        ({**EXTERNAL, "externalMetadata": {"additionalProperties": "{oops"}}, "not valid JSON"),
        ({**EXTERNAL, "externalMetadata": {"additionalProperties": "[1]"}}, "JSON object"),
    ],
)
def test_create_rejects_invalid_bodies_naming_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        models.CreateCallRequest.model_validate(body)


def test_create_reports_every_mode_problem_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        models.CreateCallRequest.model_validate(
            {**MANAGED, "type": None, "status": "requested", "result": RESULT}
        )

    text = str(info.value)
    assert "type is required" in text
    assert "status is not allowed" in text
    assert "result is not allowed" in text


def test_published_create_example_is_external_and_therefore_rejects_its_type() -> None:
    with pytest.raises(ValidationError, match="type is not allowed"):
        models.CreateCallRequest.model_validate(EXAMPLE_CREATE)

    req = models.CreateCallRequest.model_validate({**EXAMPLE_CREATE, "type": None})

    assert req.external_metadata is not None
    assert req.external_metadata.additional_properties == {"foo": "bar"}
    assert req.attempts is not None
    assert req.attempts[0].attempt_at is None


def test_naive_datetime_is_rejected_by_python_constructors_naming_the_attribute() -> None:
    with pytest.raises(ValidationError, match="requested_at"):
        models.CreateCallRequest(
            person_uuid=UUID(PERSON),
            requested_at=datetime(2025, 5, 17),
            type=models.CallType.WINBACK,
        )
    with pytest.raises(ValidationError, match="attempt_at"):
        models.AddAttemptRequest(attempt_at=datetime(2025, 5, 17))
    with pytest.raises(ValidationError, match="cancelled_at"):
        models.CancelCallRequest(cancelled_at=datetime(2025, 5, 17))
    with pytest.raises(ValidationError, match="expired_at"):
        models.ExpireCallRequest(expired_at=datetime(2025, 5, 17))


def test_requests_forbid_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="attemptedAt"):
        models.AddAttemptRequest.model_validate({"attemptedAt": REQUESTED_AT})


# --- wire format ------------------------------------------------------------------------------


def test_create_serialises_camel_case_without_nulls_and_with_z_milliseconds() -> None:
    amsterdam = timezone(timedelta(hours=2))
    req = models.CreateCallRequest(
        uuid=UUID("82b431f0-f401-4afd-b6db-9d1d751232d9"),
        person_uuid=UUID(PERSON),
        requested_at=datetime(2023, 5, 1, 2, 0, tzinfo=amsterdam),
        type=models.CallType.HAPPY_CALL,
        calling_organization_uuid=UUID(PERSON),
    )

    assert req.to_wire() == {
        "uuid": "82b431f0-f401-4afd-b6db-9d1d751232d9",
        "personUuid": PERSON,
        "requestedAt": "2023-05-01T00:00:00.000Z",
        "type": "happy_call",
        "callingOrganizationUuid": PERSON,
    }


def test_requests_keep_millisecond_precision_and_round_trip_through_json() -> None:
    req = models.CreateCallRequest(
        person_uuid=UUID(PERSON),
        requested_at=datetime(2023, 5, 1, 0, 0, 0, 123456, tzinfo=UTC),
        external_metadata=models.ExternalMetadata(additional_properties={"a": 1}),
        status=models.CallStatus.COMPLETED,
        result=models.CallResult(result_code="confirmed"),
    )

    assert req.requested_at.microsecond == 123000
    assert models.CreateCallRequest.model_validate_json(req.model_dump_json()) == req


def test_additional_properties_are_sent_as_an_object() -> None:
    req = models.CreateCallRequest.model_validate(
        {**EXTERNAL, "externalMetadata": {"additionalProperties": '{"campaign": 7}'}}
    )

    assert req.to_wire()["externalMetadata"] == {"additionalProperties": {"campaign": 7}}


def test_complete_serialises_the_nested_result() -> None:
    req = models.CompleteCallRequest(
        user_uuid=UUID(PERSON),
        result=models.CallResult(
            result_code="confirmed",
            completed_at=datetime(2023, 5, 1, 0, 0, 0, 123456, tzinfo=UTC),
            duration=120.23,
            donor_retention_rating=7,
        ),
    )

    assert req.to_wire() == {
        "userUuid": PERSON,
        "result": {
            "resultCode": "confirmed",
            "completedAt": "2023-05-01T00:00:00.123Z",
            "duration": 120.23,
            "donorRetentionRating": 7,
        },
    }


def test_empty_action_bodies_serialise_to_empty_objects() -> None:
    assert models.AddAttemptRequest().to_wire() == {}
    assert models.CancelCallRequest().to_wire() == {}
    assert models.ExpireCallRequest().to_wire() == {}


def test_format_timestamp_rejects_naive() -> None:
    assert models.format_timestamp(datetime(2023, 5, 1, tzinfo=UTC)) == "2023-05-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        models.format_timestamp(datetime(2023, 5, 1))


# --- result -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "ok"),
    [
        ({"resultCode": "confirmed"}, True),
        ({"resultCode": "x" * 64}, True),
        ({"resultCode": "x" * 65}, False),
        ({"resultCode": ""}, False),
        ({}, False),
        ({"resultCode": "c", "duration": 0}, True),
        ({"resultCode": "c", "duration": 120.23}, True),
        ({"resultCode": "c", "duration": -0.1}, False),
        ({"resultCode": "c", "donorRetentionRating": 1}, True),
        ({"resultCode": "c", "donorRetentionRating": 10}, True),
        ({"resultCode": "c", "donorRetentionRating": 0}, False),
        ({"resultCode": "c", "donorRetentionRating": 11}, False),
        ({"resultCode": "c", "donorRetentionRating": 7.5}, False),
        ({"resultCode": "c", "completedAt": "2023-05-01T00:00:00.000Z"}, True),
        ({"resultCode": "c", "completedAt": "2023-05-01T00:00:00"}, False),
        ({"resultCode": "c", "notes": "spoke to partner"}, True),
    ],
)
def test_result_field_rules(fields: dict[str, Any], ok: bool) -> None:
    if ok:
        models.CompleteCallRequest.model_validate({"result": fields})
    else:
        with pytest.raises(ValidationError):
            models.CompleteCallRequest.model_validate({"result": fields})


def test_complete_requires_a_result() -> None:
    with pytest.raises(ValidationError, match="result"):
        models.CompleteCallRequest.model_validate({"userUuid": PERSON})


# --- mark processed ---------------------------------------------------------------------------


def test_mark_processed_entry_serialises_and_accepts_any_consumer_identifier() -> None:
    entry = models.MarkProcessedEntry(
        entity_name=models.EntityName.CALL,
        entity_uuid=UUID(PERSON),
        processed_at=datetime(2023, 5, 1, tzinfo=UTC),
        consumer_identifier="12345",
    )

    assert models.MarkProcessedRequest(entries=[entry]).to_wire() == {
        "entries": [
            {
                "entityName": "call",
                "entityUuid": PERSON,
                "processedAt": "2023-05-01T00:00:00.000Z",
                "consumerIdentifier": "12345",
            }
        ]
    }


@pytest.mark.parametrize(
    "body",
    [
        {"entries": []},
        {"entries": [{"entityName": "shift", "entityUuid": PERSON, "processedAt": REQUESTED_AT}]},
        {"entries": [{"entityName": "call", "entityUuid": "x", "processedAt": REQUESTED_AT}]},
        {"entries": [{"entityName": "call", "entityUuid": PERSON}]},
    ],
)
def test_mark_processed_rejects_invalid_entries(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        models.MarkProcessedRequest.model_validate(body)


def test_to_millis_is_utc_truncated_to_the_millisecond() -> None:
    moment = datetime(2025, 5, 17, 14, 36, 18, 174999, tzinfo=timezone(timedelta(hours=2)))

    assert models.to_millis(moment) == datetime(2025, 5, 17, 12, 36, 18, 174000, tzinfo=UTC)
    assert models.to_millis(moment).tzinfo is UTC


def test_camel_model_reads_either_name_and_writes_camel_case() -> None:
    class Sample(models.CamelModel):
        call_uuid: str

    assert Sample.model_validate({"callUuid": "a"}) == Sample.model_validate({"call_uuid": "a"})
    assert Sample(call_uuid="a").model_dump() == {"callUuid": "a"}
