"""The demo's final table: one clock for every time, labelled, and whole outcomes."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from devstack.demo import (
    HAND_CALL_LABEL,
    OUTCOME_WIDTH,
    SCENARIOS,
    DemoReport,
    DemoRow,
    _note,
    hand_call_uuid,
)
from tapraise.models import CallType
from workflows.messages import CallPhase, CallState

WINTER = datetime(2026, 12, 1, 13, 3, 22, tzinfo=UTC)  # 14:03:22 in Amsterdam (CET)
SUMMER = datetime(2026, 7, 1, 13, 3, 22, tzinfo=UTC)  # 15:03:22 in Amsterdam (CEST)
REFUSAL = (
    "could not create the call: TapRaise refused the create (403): Service account may not "
    "create calls for this person (its organization is not one the account represents)"
)
BY_LABEL = {scenario.label: scenario for scenario in SCENARIOS}


def state(phase: CallPhase, **fields: object) -> CallState:
    return CallState(
        call_uuid=uuid.uuid4(),
        workflow_id="call-x",
        type=CallType.VERIFICATION,
        person_uuid=uuid.uuid4(),
        phase=phase,
        requested_at=WINTER,
        **fields,
    )


def report(notes: dict[str, str], phases: dict[str, CallPhase] | None = None) -> DemoReport:
    phases = phases or {}
    return DemoReport(
        [
            DemoRow(s, phases.get(s.label, s.expect), False, 0, notes.get(s.label, ""))
            for s in SCENARIOS
        ]
    )


def test_every_time_is_the_donors_local_time_with_its_abbreviation() -> None:
    due = state(CallPhase.DUE, next_slot_at=WINTER, due_until=WINTER)
    assert _note(due) == "due until 14:03:22 CET"
    scheduled = state(CallPhase.SCHEDULED, next_slot_at=SUMMER, due_until=SUMMER)
    assert _note(scheduled) == "next slot 15:03:22 CEST"
    callback = state(CallPhase.SCHEDULED, callback_at=WINTER, next_slot_at=WINTER)
    assert _note(callback) == "callback at 14:03:22 CET"


def test_the_table_labels_the_zone_of_its_times_and_shows_no_other() -> None:
    notes = {
        "callback": _note(state(CallPhase.SCHEDULED, callback_at=WINTER, next_slot_at=WINTER)),
        "due-now": _note(state(CallPhase.DUE, next_slot_at=WINTER, due_until=WINTER)),
    }
    table = report(notes).table()
    header = table.splitlines()[0]
    assert header.split()[-4:] == ["outcome", "(times", "in", "Europe/Amsterdam)"]
    assert "UTC" not in table
    times = re.findall(r"\d\d:\d\d:\d\d \S+", table)
    assert times and all(t.endswith(" CET") for t in times)


def test_a_long_outcome_is_wrapped_whole_under_its_column() -> None:
    table = report({"foreign-person": REFUSAL}).table()
    assert "…" not in table
    assert REFUSAL in " ".join(table.split())
    lines = table.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("foreign-person"))
    column = lines[0].index("outcome")
    assert lines[first].index("could not create") == column
    following = lines[first + 1]
    assert following[:column].strip() == "" and following[column] != " "
    assert all(len(line) - column <= OUTCOME_WIDTH for line in lines[1:])
    # The next call's row comes after the whole outcome.
    assert any(line.startswith("callback ") for line in lines[first + 2 :])


def test_the_call_to_drive_by_hand_is_the_due_now_call_while_it_is_open() -> None:
    assert BY_LABEL[HAND_CALL_LABEL].call_uuid == hand_call_uuid()
    assert report({}).open_call() == hand_call_uuid()
    closed = {HAND_CALL_LABEL: CallPhase.EXPIRED, "callback": CallPhase.DUE}
    assert report({}, closed).open_call() == BY_LABEL["callback"].call_uuid
    every = {s.label: CallPhase.EXPIRED for s in SCENARIOS}
    assert report({}, every).open_call() is None
