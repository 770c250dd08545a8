"""The demo driver: a dozen calls, played through by a pretend agent, in every phase.

`run_demo(client)` starts twelve calls of all three types on the compressed demo policy (minutes
become seconds), then acts as the agents' tooling would, through the workflow's updates:
unanswered attempts, a donor's callback request, completions, a cancellation. Within a minute
the Web UI shows calls in every phase: scheduled, due, completed, cancelled, expired (by a wrong
number, by attempts, by the deadline) and failed (a person TapRaise refuses with 403).

Left running, the four calls the demo leaves open (scheduled or due) stay quiet: a slot nobody
reports on stays due for 20 minutes (the "due-now" call: 30) and the next one follows 10 minutes
later, so each lapses at most two slots an hour, and every open call expires by its deadline an
hour after it started.

Every demo call has a fixed uuid derived from its label, so a second run finds the calls of the
first: running ones are left as they are and finished ones are reported, never started twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from sandbox.seed import DEMO_ORGANIZATION_UUID, DEMO_PERSON_UUIDS, FOREIGN_PERSON_UUID
from starter.service import CallService, StartStatus, stamp_action
from tapraise.models import CallResult, CallType
from workflows.messages import (
    ATTEMPT,
    CANCEL,
    COMPLETE,
    RESCHEDULE,
    STATE,
    TASK_QUEUE,
    ActionAccepted,
    AttemptSignal,
    CallInput,
    CallPhase,
    CallSearchAttributes,
    CallState,
    CancelSignal,
    CompleteSignal,
    RescheduleSignal,
    workflow_id_for,
)
from workflows.policy import DEFAULT_TIMEZONE, AttemptOutcome, demo_policy, zone

# How long the demo waits for any one call to reach its phase. The slowest is the call left to
# expire by its deadline (20 s after it was requested).
PHASE_TIMEOUT_SECONDS: Final = 75.0
POLL_SECONDS: Final = 0.25
# The calls left open stay open this long, so that there is time to drive them by hand.
OPEN_CALL_DEADLINE: Final = timedelta(hours=1)
# A slot nobody reports on lapses when its attempt window closes, and the next slot follows a
# missed-slot delay later; each lapse costs a dozen history events. The demo policy's 20 s + 5 s
# would lapse a slot every 25 s, so every demo call waits longer after a lapse (a call left alone,
# as when the demo is interrupted, lapses about one slot a minute until its 3-minute deadline),
# and the calls left open keep a slot due for 20 minutes and wait 10 more: at most two lapses an
# hour, well below 100 history events an hour each.
MISSED_SLOT_DELAY: Final = timedelta(seconds=40)
OPEN_ATTEMPT_WINDOW: Final = timedelta(minutes=20)
OPEN_MISSED_SLOT_DELAY: Final = timedelta(minutes=10)
# The zone of every demo call (the demo policy's): the table shows its times on this clock.
DEMO_TIMEZONE: Final = DEFAULT_TIMEZONE
TIMES_LABEL: Final = f"times in {DEMO_TIMEZONE}"
# The outcome column wraps at this width: a refusal's whole reason is shown.
OUTCOME_WIDTH: Final = 64
# The open call the stack's guide names as `CALL`, to drive by hand: due for half an hour.
HAND_CALL_LABEL: Final = "due-now"

Progress = Callable[[str], None]


def demo_call_uuid(label: str) -> uuid.UUID:
    """The fixed version-4 uuid of a demo call: the same label gives the same call every run."""
    digest = hashlib.sha256(f"tapraise-calls:demo:{label}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


@dataclass(frozen=True)
class Seen:
    """Where a call is, as the demo saw it."""

    phase: CallPhase | None
    attempts: int = 0
    note: str = ""


_FAILED_STATUSES: Final = frozenset(
    {
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.TIMED_OUT,
        WorkflowExecutionStatus.CANCELED,
    }
)


class Agent:
    """The agents' tooling for one call: updates with progress lines, and phase waits."""

    def __init__(self, label: str, handle: WorkflowHandle[Any, Any], progress: Progress) -> None:
        self.label = label
        self.handle = handle
        self.progress = progress

    def say(self, text: str) -> None:
        self.progress(f"{self.label:<16} {text}")

    async def state(self) -> CallState | None:
        """The `state` query, or None while (or when) the workflow cannot answer it."""
        try:
            state: CallState = await self.handle.query(STATE, result_type=CallState)
        except (RPCError, WorkflowQueryFailedError):
            return None
        return state

    async def look(self, *, running_fallback: bool = False) -> Seen | None:
        """Where the call is: from the `state` query, else from the workflow's description.

        The query replays the call's history on the worker. A closed call whose history does
        not replay (recorded by other workflow code) is read from its status and search
        attributes instead; a running one too when `running_fallback` is set.
        """
        state = await self.state()
        if state is not None:
            return Seen(state.phase, state.attempts_made, _note(state))
        try:
            description = await self.handle.describe()
        except RPCError:
            return None
        if description.status == WorkflowExecutionStatus.RUNNING and not running_fallback:
            return None  # not answering yet: its first workflow task is still to run
        attributes = description.typed_search_attributes
        attempts = attributes.get(CallSearchAttributes.CALL_ATTEMPTS) or 0
        if description.status in _FAILED_STATUSES:
            return Seen(CallPhase.FAILED, attempts, await self._failure())
        phase = attributes.get(CallSearchAttributes.CALL_PHASE)
        known = CallPhase(phase) if phase in set(CallPhase) else None
        return Seen(known, attempts, "(from its search attributes)")

    async def _failure(self) -> str:
        """The message the failed workflow ended with."""
        try:
            await self.handle.result()
        except WorkflowFailureError as err:
            cause = err.cause
            return str(getattr(cause, "message", None) or cause)
        except RPCError:
            pass
        return "failed"

    async def wait(self, *phases: CallPhase, within: float = PHASE_TIMEOUT_SECONDS) -> Seen:
        """Poll until the call is in one of `phases` (or final).

        Raises:
            TimeoutError: the call did not get there within `within` seconds.
        """
        deadline = time.monotonic() + within
        while True:
            seen = await self.look()
            if seen is not None and seen.phase is not None:
                if seen.phase in phases or seen.phase.is_final:
                    return seen
            if time.monotonic() > deadline:
                now = seen.phase.value if seen and seen.phase else "no answer"
                wanted = "/".join(p.value for p in phases)
                raise TimeoutError(f"not {wanted} after {within:.0f} s (is {now})")
            await asyncio.sleep(POLL_SECONDS)

    async def _update(self, name: str, message: Any, what: str) -> None:
        try:
            answer: ActionAccepted = await self.handle.execute_update(
                name, message, result_type=ActionAccepted
            )
        except WorkflowUpdateFailedError as err:
            cause = err.cause.message if hasattr(err.cause, "message") else err
            self.say(f"{what}: refused ({cause})")
            return
        self.say(f"{what} -> {answer.phase.value}{f' ({answer.detail})' if answer.detail else ''}")

    async def attempt(self, outcome: AttemptOutcome) -> None:
        # Stamped here, as the CLI and the gateway stamp it: the report's time is its identity.
        message = stamp_action(AttemptSignal(outcome=outcome), datetime.now(UTC))
        await self._update(ATTEMPT, message, f"attempt {outcome.value}")

    async def complete(self, result_code: str, **result: Any) -> None:
        message = CompleteSignal(result=CallResult(result_code=result_code, **result))
        await self._update(COMPLETE, message, f"complete {result_code}")

    async def reschedule(self, after: timedelta, notes: str) -> None:
        at = datetime.now(UTC) + after
        message = RescheduleSignal(at=at, notes=notes)
        await self._update(RESCHEDULE, message, f"callback in {after.total_seconds() / 60:.0f} min")

    async def cancel(self, reason: str) -> None:
        await self._update(CANCEL, CancelSignal(reason=reason), "cancel")


Play = Callable[[Agent], Awaitable[None]]


async def _nothing(agent: Agent) -> None:
    """Nobody reports anything: the call runs on its own timers."""


async def _reached_first_time(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.complete("confirmed", duration=95, donor_retention_rating=8)


async def _reached_second_time(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.attempt(AttemptOutcome.NO_ANSWER)
    await agent.wait(CallPhase.DUE)  # the retry slot, 8 s later
    await agent.complete("thanked", notes="happy with the newsletter")


async def _busy_then_reached(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.attempt(AttemptOutcome.BUSY)
    await agent.wait(CallPhase.DUE)  # the retry slot after a busy line, 4 s later
    await agent.complete("reactivated", duration=240)


async def _cancelled(agent: Agent) -> None:
    await agent.wait(CallPhase.SCHEDULED, CallPhase.DUE)
    await agent.cancel("the donor already called the office")


async def _wrong_number(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.attempt(AttemptOutcome.WRONG_NUMBER)


async def _never_answers(agent: Agent) -> None:
    # The agent's tooling reports a day's worth of tries at once; the fifth is the last allowed.
    await agent.wait(CallPhase.SCHEDULED, CallPhase.DUE)
    for outcome in (
        AttemptOutcome.NO_ANSWER,
        AttemptOutcome.BUSY,
        AttemptOutcome.VOICEMAIL,
        AttemptOutcome.NO_ANSWER,
        AttemptOutcome.NO_ANSWER,
    ):
        await agent.attempt(outcome)


async def _callback(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.reschedule(timedelta(minutes=20), "donor is driving; call back later")


async def _voicemail(agent: Agent) -> None:
    await agent.wait(CallPhase.DUE)
    await agent.attempt(AttemptOutcome.VOICEMAIL)


@dataclass(frozen=True)
class Scenario:
    """One demo call: who is called, what the agent does, and where the call should end up."""

    label: str
    call_type: CallType
    person_uuid: str
    expect: CallPhase
    story: str
    play: Play = _nothing
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def call_uuid(self) -> uuid.UUID:
        return demo_call_uuid(self.label)

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.call_uuid)

    def call_input(self) -> CallInput:
        policy = demo_policy().model_copy(
            update={"missed_slot_delay": MISSED_SLOT_DELAY, **self.policy}
        )
        return CallInput(
            uuid=self.call_uuid,
            person_uuid=uuid.UUID(self.person_uuid),
            type=self.call_type,
            calling_organization_uuid=uuid.UUID(DEMO_ORGANIZATION_UUID),
            notes=f"Demo call: {self.story}.",
            policy=policy.model_dump(mode="json"),
        )


_OPEN = {
    "deadline": OPEN_CALL_DEADLINE,
    "attempt_window": OPEN_ATTEMPT_WINDOW,
    "missed_slot_delay": OPEN_MISSED_SLOT_DELAY,
}
_V, _H, _W = CallType.VERIFICATION, CallType.HAPPY_CALL, CallType.WINBACK
_P = DEMO_PERSON_UUIDS

SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("first-try", _V, _P[0], CallPhase.COMPLETED, "reached on the first try",
             _reached_first_time),
    Scenario("second-try", _H, _P[1], CallPhase.COMPLETED, "no answer, then reached",
             _reached_second_time),
    Scenario("busy-then-yes", _W, _P[2], CallPhase.COMPLETED, "busy, then won back",
             _busy_then_reached),
    Scenario("cancelled", _H, _P[3], CallPhase.CANCELLED, "cancelled before the first try",
             _cancelled),
    Scenario("wrong-number", _V, _P[4], CallPhase.EXPIRED, "wrong number ends the call",
             _wrong_number),
    Scenario("no-one-home", _W, _P[5], CallPhase.EXPIRED, "five unanswered attempts",
             _never_answers),
    Scenario("never-reported", _V, _P[6], CallPhase.EXPIRED,
             "nobody reports: slots are missed until the 20 s deadline",
             policy={"deadline": timedelta(seconds=20), "attempt_window": timedelta(seconds=5),
                     "missed_slot_delay": timedelta(seconds=2)}),
    Scenario("foreign-person", _V, FOREIGN_PERSON_UUID, CallPhase.FAILED,
             "a person outside the account's organizations: TapRaise answers 403"),
    Scenario("callback", _W, _P[7], CallPhase.SCHEDULED, "donor asked for a callback in 20 min",
             _callback, policy=_OPEN),
    Scenario("voicemail", _V, _P[8], CallPhase.SCHEDULED, "voicemail; next try in 20 min",
             _voicemail,
             policy={**_OPEN, "retry_delays": {**demo_policy().retry_delays,
                                               AttemptOutcome.VOICEMAIL: timedelta(minutes=20)}}),
    Scenario("first-slot-later", _H, _P[9], CallPhase.SCHEDULED, "first slot in 15 min",
             policy={**_OPEN, "first_attempt_delay": timedelta(minutes=15)}),
    Scenario("due-now", _H, _P[10], CallPhase.DUE, "due: waiting 30 min for an agent's report",
             policy={**_OPEN, "attempt_window": timedelta(minutes=30)}),
)  # fmt: skip
"""The demo's calls: every call type, every phase."""


_OPEN_PHASES: Final = (CallPhase.DUE, CallPhase.SCHEDULED)


def hand_call_uuid() -> uuid.UUID:
    """The demo call the stack's guide names as `CALL`: open for an hour after the demo starts."""
    return demo_call_uuid(HAND_CALL_LABEL)


@dataclass
class DemoRow:
    """One demo call in the final table."""

    scenario: Scenario
    phase: CallPhase | None
    earlier: bool = False
    attempts: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        """A call of this run reached its phase; one of an earlier run may have moved on."""
        return self.earlier or self.phase == self.scenario.expect


@dataclass
class DemoReport:
    """Where every demo call ended up."""

    rows: list[DemoRow]

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def open_call(self) -> uuid.UUID | None:
        """A call still waiting for an agent, to try the CLI on.

        The `HAND_CALL_LABEL` call while it is open, else any due call, else any scheduled one;
        None when every call is closed (the open ones expire an hour after they started).
        """
        for row in self.rows:
            if row.scenario.label == HAND_CALL_LABEL and row.phase in _OPEN_PHASES:
                return row.scenario.call_uuid
        for phase in _OPEN_PHASES:
            for row in self.rows:
                if row.phase == phase:
                    return row.scenario.call_uuid
        return None

    def summary(self) -> str:
        counts = Counter(row.phase.value if row.phase else "unknown" for row in self.rows)
        text = f"{len(self.rows)} calls: " + ", ".join(f"{n} {p}" for p, n in counts.items())
        earlier = sum(row.earlier for row in self.rows)
        if earlier:
            text += f" ({earlier} from an earlier run, left as they were)"
        missed = [row.scenario.label for row in self.rows if not row.ok]
        if missed:
            text += f"; NOT as expected: {', '.join(missed)}"
        return text

    def table(self) -> str:
        """A plain-text table: call → workflow id, type, phase, attempts, outcome.

        Every time in it is the donor's local time (the demo's calls are all in
        `DEMO_TIMEZONE`), labelled with its abbreviation, as the workflow's own messages are. A
        long outcome is wrapped under itself, never cut.
        """
        header = ("call", "workflow id", "type", "phase", "tries", f"outcome ({TIMES_LABEL})")
        lines = [
            (
                row.scenario.label + (" *" if row.earlier else ""),
                row.scenario.workflow_id,
                row.scenario.call_type.value,
                (row.phase.value if row.phase else "?")
                + ("" if row.ok else f" (expected {row.scenario.expect.value})"),
                str(row.attempts),
                row.note,
            )
            for row in self.rows
        ]
        widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header) - 1)]
        indent = " " * (sum(widths) + 2 * len(widths))
        out: list[str] = []
        for r in [header, *lines]:
            lead = "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True))
            parts = _wrap(r[-1]) if r is not header else [r[-1]]
            out.append(f"{lead}  {parts[0]}")
            out += [indent + part for part in parts[1:]]
        if any(row.earlier for row in self.rows):
            out.append("* started by an earlier demo run")
        return "\n".join(line.rstrip() for line in out)


def _wrap(text: str, width: int = OUTCOME_WIDTH) -> list[str]:
    """`text` in lines of at most `width` characters (a longer word keeps a line of its own)."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def local_time(moment: datetime) -> str:
    """A time of a demo call as the table shows it: the donor's clock, e.g. "14:03:22 CET"."""
    local = moment.astimezone(zone(DEMO_TIMEZONE))
    return f"{local:%H:%M:%S} {local.tzname()}"


def _note(state: CallState | None) -> str:
    if state is None:
        return ""
    if state.failure:
        return state.failure
    if state.final_reason:
        return state.final_reason
    if state.callback_at:
        return f"callback at {local_time(state.callback_at)}"
    if state.next_slot_at:
        verb = "due until" if state.phase == CallPhase.DUE and state.due_until else "next slot"
        at = state.due_until if verb == "due until" and state.due_until else state.next_slot_at
        return f"{verb} {local_time(at)}"
    return ""


async def _run_one(
    client: Client, scenario: Scenario, task_queue: str, progress: Progress
) -> DemoRow:
    """Start (or find) one call, play it, and wait for its phase."""
    # Started exactly as a CRM starts a call; a second demo run finds the calls of the first.
    result = await CallService(client, task_queue=task_queue).start(scenario.call_input())
    earlier = result.status is not StartStatus.STARTED
    handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(scenario.workflow_id)
    agent = Agent(scenario.label, handle, progress)
    if earlier:
        seen = await agent.look(running_fallback=True) or Seen(None)
        agent.say(f"from an earlier run, {_phase_text(seen)}: left as is")
        return DemoRow(scenario, seen.phase, True, seen.attempts, seen.note)
    agent.say(f"started {scenario.workflow_id} ({scenario.story})")
    try:
        await scenario.play(agent)
        seen = await agent.wait(scenario.expect)
    except TimeoutError as exc:
        agent.say(str(exc))
        seen = await agent.look(running_fallback=True) or Seen(None)
    agent.say(f"is {_phase_text(seen)}")
    return DemoRow(scenario, seen.phase, False, seen.attempts, seen.note)


def _phase_text(seen: Seen) -> str:
    return seen.phase.value if seen.phase else "in an unknown phase"


async def run_demo(
    client: Client,
    *,
    task_queue: str = TASK_QUEUE,
    progress: Progress = print,
    scenarios: Iterable[Scenario] = SCENARIOS,
) -> DemoReport:
    """Start the demo calls, play agents through them, and report where each ended up.

    Args:
        client: a client from `starter.connect.connect` (the pydantic data converter).
        task_queue: where the worker listens.
        progress: receives one line per step.
        scenarios: the calls to play (default: all twelve).

    Returns:
        The report; `report.ok` when every call of this run reached its phase.
    """
    rows = await asyncio.gather(*(_run_one(client, s, task_queue, progress) for s in scenarios))
    return DemoReport(list(rows))
