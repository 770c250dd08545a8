"""The bounds of the call's input and of every message: each free-text field has a limit, checked
by the one model the CLI, the gateway and the workflow share, and never looser than TapRaise's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sandbox.validation import ApiError, CompleteIn, CreateCallIn, parse_body
from starter.service import InvalidInput, parse_action, parse_call
from tapraise.errors import validation_problems
from tapraise.models import CompleteCallRequest, CreateCallRequest
from workflows.messages import (
    CALL_NOTES_MAX_LENGTH,
    EXTERNAL_ID_MAX_LENGTH,
    JSON_MAX_LENGTH,
    MESSAGE_MODELS,
    NOTE_MAX_LENGTH,
    RESULT_CODE_MAX_LENGTH,
    STATUS_DESCRIPTION_MAX_LENGTH,
    CallInput,
    CompleteSignal,
)
from workflows.policy import TIMEZONE_MAX_LENGTH

pytestmark = pytest.mark.timeout(30)

PERSON = str(uuid.uuid4())
# Bounded as a whole, as JSON text (JSON_MAX_LENGTH), rather than string by string; `resume` is
# the workflow's own, refused in a first run's input.
_BOUNDED_AS_JSON = {"policy", "additionalProperties", "resume"}
# Strings whose form bounds them: an enum, a uuid, a timestamp.
_FORMS = {"uuid", "date-time"}


def _unbounded_strings(schema: dict[str, Any]) -> Iterator[str]:
    """The paths of the string properties in `schema` that have no maxLength."""
    definitions = schema.get("$defs", {})

    def walk(node: Any, path: str, seen: frozenset[str]) -> Iterator[str]:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                yield from walk(definitions[name], path, seen | {name})
            return
        if node.get("type") == "string" and not (
            "maxLength" in node or "enum" in node or node.get("format") in _FORMS
        ):
            yield path or "(the value)"
        for option in node.get("anyOf", []):
            yield from walk(option, path, seen)
        for name, prop in node.get("properties", {}).items():
            if name not in _BOUNDED_AS_JSON:
                yield from walk(prop, f"{path}.{name}".lstrip("."), seen)
        for key in ("items", "additionalProperties"):
            yield from walk(node.get(key), f"{path}[]", seen)

    return walk(schema, "", frozenset())


@pytest.mark.parametrize(
    "model", [CallInput, *MESSAGE_MODELS.values()], ids=lambda model: model.__name__
)
def test_every_string_of_the_input_and_of_every_message_has_a_maximum_length(
    model: type[BaseModel],
) -> None:
    schema = model.model_json_schema(by_alias=True)
    assert list(_unbounded_strings(schema)) == []


def _call(**fields: Any) -> dict[str, Any]:
    return {"personUuid": PERSON, "type": "verification", **fields}


def _json_of_length(length: int) -> dict[str, str]:
    """An object whose compact JSON text is exactly `length` characters."""
    return {"k": "x" * (length - len('{"k":""}'))}


# (what, the field a refusal names, its limit, a valid input with that field `n` long)
LIMITS: list[tuple[str, str, int, Callable[[int], tuple[str, dict[str, Any]]]]] = [
    ("call notes", "notes", CALL_NOTES_MAX_LENGTH,
     lambda n: ("call", _call(notes="n" * n))),
    ("referenceId", "externalMetadata.referenceId", EXTERNAL_ID_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={"referenceId": "r" * n}))),
    ("applicationName", "externalMetadata.applicationName", EXTERNAL_ID_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={"applicationName": "a" * n}))),
    ("agentReferenceId", "externalMetadata.agentReferenceId", EXTERNAL_ID_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={"agentReferenceId": "a" * n}))),
    ("statusCode", "externalMetadata.statusCode", EXTERNAL_ID_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={"statusCode": "s" * n}))),
    ("statusDescription", "externalMetadata.statusDescription", STATUS_DESCRIPTION_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={"statusDescription": "s" * n}))),
    ("additionalProperties", "externalMetadata.additionalProperties", JSON_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={"additionalProperties": _json_of_length(n)}))),
    ("additionalProperties as a JSON string", "externalMetadata.additionalProperties",
     JSON_MAX_LENGTH,
     lambda n: ("call", _call(externalMetadata={
         "additionalProperties": json.dumps(_json_of_length(n), separators=(",", ":"))}))),
    ("policy", "policy", JSON_MAX_LENGTH,
     lambda n: ("call", _call(policy={"holidayCountries": ["x" * (n - 25)]}))),
    ("result notes", "result.notes", NOTE_MAX_LENGTH,
     lambda n: ("complete", {"result": {"resultCode": "confirmed", "notes": "n" * n}})),
    ("result code", "result.resultCode", RESULT_CODE_MAX_LENGTH,
     lambda n: ("complete", {"result": {"resultCode": "c" * n}})),
    ("callback notes", "notes", NOTE_MAX_LENGTH,
     lambda n: ("reschedule", {"at": "2030-01-07T10:00:00Z", "notes": "n" * n})),
    ("cancel reason", "reason", NOTE_MAX_LENGTH,
     lambda n: ("cancel", {"reason": "r" * n})),
]  # fmt: skip


def _parse(kind: str, data: dict[str, Any]) -> BaseModel:
    return parse_call(data) if kind == "call" else parse_action(kind, data)


@pytest.mark.parametrize(("what", "field", "limit", "build"), LIMITS, ids=[c[0] for c in LIMITS])
def test_each_limit_is_accepted_up_to_it_and_refused_past_it_naming_the_field(
    what: str, field: str, limit: int, build: Callable[[int], tuple[str, dict[str, Any]]]
) -> None:
    _parse(*build(limit))
    with pytest.raises(InvalidInput) as refused:
        _parse(*build(limit + 1))
    [problem] = refused.value.problems
    assert problem.startswith(f"{field}: "), problem
    assert str(limit) in problem and len(problem) < 200


def test_a_time_zone_name_past_its_limit_is_refused_without_being_quoted() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_call(_call(timezone="Europe/" + "x" * TIMEZONE_MAX_LENGTH))
    assert refused.value.problems == [
        f"timezone: String should have at most {TIMEZONE_MAX_LENGTH} characters"
    ]


def test_a_call_and_a_result_at_every_limit_are_what_tapraise_accepts() -> None:
    # Our limits are never looser than TapRaise's own: whatever the models let through, the
    # sandbox (TapRaise's documented validation) takes.
    call = parse_call(
        _call(
            notes="n" * CALL_NOTES_MAX_LENGTH,
            externalMetadata={
                "applicationName": "a" * EXTERNAL_ID_MAX_LENGTH,
                "referenceId": "r" * EXTERNAL_ID_MAX_LENGTH,
                "agentReferenceId": "g" * EXTERNAL_ID_MAX_LENGTH,
                "statusCode": "s" * EXTERNAL_ID_MAX_LENGTH,
                "statusDescription": "d" * STATUS_DESCRIPTION_MAX_LENGTH,
                "additionalProperties": _json_of_length(JSON_MAX_LENGTH),
            },
        )
    )
    create = CreateCallRequest(
        requested_at=datetime(2030, 1, 7, tzinfo=UTC),
        person_uuid=call.person_uuid,
        external_metadata=call.external_metadata,
        notes=call.notes,
    )
    parse_body(CreateCallIn, json.dumps(create.to_wire()).encode())

    result = {"resultCode": "c" * RESULT_CODE_MAX_LENGTH, "notes": "n" * NOTE_MAX_LENGTH}
    message = parse_action("complete", {"result": result})
    assert isinstance(message, CompleteSignal)
    complete = CompleteCallRequest(result=message.result)
    parse_body(CompleteIn, json.dumps(complete.to_wire()).encode())

    # Past TapRaise's documented limit both refuse.
    longer = {"result": {"resultCode": "c" * (RESULT_CODE_MAX_LENGTH + 1)}}
    with pytest.raises(InvalidInput):
        parse_action("complete", longer)
    with pytest.raises(ApiError):
        parse_body(CompleteIn, json.dumps(longer).encode())


def test_a_refusal_quotes_no_long_name_and_no_deep_nesting_escapes_as_a_crash() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_call(_call(**{"k" * 100_000: 1}))
    [problem] = refused.value.problems
    assert problem.endswith(": unknown field") and len(problem) < 100, problem[:200]

    nested = "[" * 5_000 + "]" * 5_000
    with pytest.raises(InvalidInput) as deep:
        parse_call(_call(externalMetadata={"additionalProperties": nested}))
    assert deep.value.problems == [
        "externalMetadata.additionalProperties: additionalProperties is nested too deeply"
    ]


def test_python_callers_building_tapraise_s_own_objects_are_held_to_the_limits() -> None:
    from tapraise.models import CallResult, ExternalMetadata

    with pytest.raises(ValidationError) as refused:
        CompleteSignal(result=CallResult(result_code="x", notes="n" * (NOTE_MAX_LENGTH + 1)))
    assert validation_problems(refused.value)[0].startswith("result.notes: ")
    with pytest.raises(ValidationError):
        CallInput(
            person_uuid=uuid.uuid4(),
            type="verification",
            external_metadata=ExternalMetadata(reference_id="r" * (EXTERNAL_ID_MAX_LENGTH + 1)),
        )
