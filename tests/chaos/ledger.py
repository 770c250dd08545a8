"""What each call's agent reported, and what the workflow accepted or refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from tapraise import to_millis
from workflows.messages import CANCEL, COMPLETE, CallInput, CallState, workflow_id_for


@dataclass
class Update:
    """One update an agent sent, and what became of it.

    Attributes:
        refused_on_purpose: The message must be refused (see `Refusal`): never a final action.
        repeat: The answer (outcome, detail) to a second send under the same update id.
    """

    id: str
    name: str
    attempt_at: str | None = None  # for attempts: the attemptAt reported
    outcome: str = "pending"  # accepted | rejected | unknown
    detail: str = ""
    refused_on_purpose: bool = False
    repeat: tuple[str, str] | None = None


@dataclass
class AppChange:
    """One thing a user did in the TapRaise app, and how the app answered.

    Attributes:
        action: `request`, `add-attempt`, `complete`, `cancel` or `expire`.
        status: The app's answer (201 or 200: done; 400 or 409: refused, e.g. the call had
            closed meanwhile; 0: no answer).
        attempt_at: For an attempt: its `attemptAt` (as `instant_key` writes it).
    """

    action: str
    status: int
    attempt_at: str | None = None


@dataclass
class Refusal:
    """A final action sent knowing it must be refused, and what would betray it in TapRaise.

    Attributes:
        name: `complete` or `cancel`.
        via: `update` or `signal`.
        why: `result code` (outside TapRaise's allow-list) or `dated` (before `requestedAt`).
        field: What TapRaise would receive that no other message carries: `resultCode`,
            `completedAt` or `cancelledAt`.
        value: Its value (an instant as `instant_key` writes it).
        update: The update, when sent as one.
        refused_by: `TapRaise`, `workflow` or `closed` (the call had closed), once known.
    """

    name: str
    via: str
    why: str
    field: str
    value: str
    update: Update | None = None
    refused_by: str | None = None


@dataclass
class Ledger:
    """One call: its agent's script and what the agent reported and the workflow accepted.

    Attempts are kept by their `attemptAt` (milliseconds, UTC), so that one sent twice counts
    once. An update whose answer never arrived (the server restarted under it, or the workflow
    closed first) is *unknown* until the workflow's history says whether it was accepted.

    Attributes:
        accepted_attempts: Attempts the workflow accepted (an update answered "attempt N
            recorded" or "duplicate: already recorded", or a signal the workflow had to accept).
        unknown_attempts: Attempts sent whose fate the agent does not know.
        signal_final: The final phase asked for by signal (`completed`), if any.
        expire_reason: When the script leaves the call to the policy: `max_attempts` or
            `deadline`.
        updates: Updates sent, in order.
        bare: Started with the input alone, as a plain `temporal workflow start` does.
        policy: The call's policy overrides as JSON (what a bare start sends).
        burst: Started in a burst that a worker kill followed as soon as its creates landed.
        refuse: The final action (name, via, why) the agent sends first, knowing it must be
            refused; None for none.
        same_id: How updates delivered twice are sent again under their own id: `sequential`,
            `concurrent`, or None (a second id, as before).
        refusals: The refused-on-purpose messages sent.
        start_tries: First starts sent (a bare start sent again after a restart may find its
            first try went through).
        in_app: Requested in the TapRaise app, never started by the CRM: `started` once the
            follower adopted it (its workflow exists).
        app_plan: The changes users make to the call in the TapRaise app, in order:
            `add-attempt`, `complete`, `cancel`, `expire`.
        app_changes: The changes made in the app (the request included), as the app answered.
        adopted_after: Seconds from the app's request to the workflow the follower started.
    """

    index: int
    call: CallInput
    plan: str
    accepted_attempts: set[str] = field(default_factory=set)
    unknown_attempts: set[str] = field(default_factory=set)
    signal_final: str | None = None
    expire_reason: str | None = None
    started: bool = False
    updates: list[Update] = field(default_factory=list)
    race: bool = False
    notes: list[str] = field(default_factory=list)
    bare: bool = False
    policy: dict[str, Any] = field(default_factory=dict)
    burst: bool = False
    refuse: tuple[str, str, str] | None = None
    same_id: str | None = None
    refusals: list[Refusal] = field(default_factory=list)
    start_tries: int = 0
    in_app: bool = False
    app_plan: tuple[str, ...] = ()
    app_changes: list[AppChange] = field(default_factory=list)
    adopted_after: float | None = None

    @property
    def call_uuid(self) -> str:
        return str(self.call.uuid)

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.call.uuid or "")

    @property
    def label(self) -> str:
        """The plan and its variations, as problems name the call."""
        parts = [self.plan]
        if self.bare:
            parts.append("bare start")
        if self.burst:
            parts.append("kill burst")
        if self.refuse is not None:
            name, via, why = self.refuse
            parts.append(f"refused {name} by {via} ({why})")
        if self.same_id is not None:
            parts.append(f"same id {self.same_id}")
        if self.app_plan:
            parts.append(f"in the app: {' then '.join(self.app_plan)}")
        return ", ".join(parts)

    @property
    def app_closes(self) -> bool:
        """Whether a user may make the call final in the TapRaise app: it may then close under
        its agent, whose later messages find it closed."""
        return any(action in APP_FINALS for action in self.app_plan)

    def updates_accepted(self) -> set[str]:
        """The final phases asked for by updates the workflow answered accepted (not queued)."""
        return {
            PHASE_OF[u.name]
            for u in self.updates
            if u.name in PHASE_OF and not u.refused_on_purpose and outcome_of(u) == "accepted"
        }

    def finals(self, outcome: str) -> set[str]:
        """The final phases asked for by updates with this outcome (and by signal, if any).

        For `rejected`, only refusals saying the call is already in (or already being taken to)
        the phase asked for: a worker that died after carrying out the action but before
        recording it leaves the call closed in TapRaise, and the next worker answers the same
        update "already cancelled"; a delivery retried while the first is carried out is
        answered "already being cancelled". An update answered "queued" (TapRaise was not
        answering) counts as `unknown`: it is carried out later, or refused then. Messages sent
        to be refused never count.
        """
        phases = {
            PHASE_OF[u.name]
            for u in self.updates
            if u.name in PHASE_OF
            and not u.refused_on_purpose
            and outcome_of(u) == outcome
            and (
                outcome != "rejected"
                or u.detail
                in (
                    f"call is already {PHASE_OF[u.name]}",
                    f"call is already being {PHASE_OF[u.name]}",
                )
            )
        }
        if outcome == "accepted" and self.signal_final:
            phases.add(self.signal_final)
        return phases

    def finals_sent(self) -> set[str]:
        """The final phases the agents asked for, whatever the answers (refused-on-purpose
        messages aside)."""
        phases = {
            PHASE_OF[u.name]
            for u in self.updates
            if u.name in PHASE_OF and not u.refused_on_purpose
        }
        return phases | ({self.signal_final} if self.signal_final else set())

    def judge(self, update: Update, answer: dict[str, Any] | None) -> None:
        """Record the workflow's answer (None: refused) to an update."""
        if answer is None:
            update.outcome = "rejected"
            return
        update.outcome, update.detail = "accepted", str(answer.get("detail", ""))
        if update.attempt_at is not None:
            self.unknown_attempts.discard(update.attempt_at)
            if update.detail.startswith(("attempt ", "duplicate")):
                self.accepted_attempts.add(update.attempt_at)

    def record(self, update: Update, answer: tuple[str, str]) -> None:
        """Record the answer one send of an update gave: (outcome, detail)."""
        outcome, detail = answer
        if outcome == "accepted":
            self.judge(update, {"detail": detail})
        elif outcome == "rejected":
            self.judge(update, None)
            update.detail = detail
        else:
            update.outcome, update.detail = "unknown", detail


PHASE_OF: Final = {COMPLETE: "completed", CANCEL: "cancelled"}
# The app's changes that make a call final, and the phase each leaves it in.
APP_FINALS: Final = {"complete": "completed", "cancel": "cancelled", "expire": "expired"}
ADOPTED: Final = "already final in TapRaise"


def outcome_of(update: Update) -> str:
    """An update's outcome as far as the final state goes: "queued" is not yet a decision."""
    if update.outcome == "accepted" and " queued: " in update.detail:
        return "unknown"
    return update.outcome


def who_refused(reason: str) -> str:
    """Who refused a message, from the refusal's text."""
    if reason.startswith("TapRaise refused"):
        return "TapRaise"
    if reason.startswith("call is already"):
        return "closed"
    return "workflow"


def refusal_in_events(state: CallState, refusal: Refusal) -> str | None:
    """Who refused a refused-on-purpose message, from the call's events; None: not yet.

    Only this message can leave these events: the agent sends no other completion or
    cancellation until it is refused. A delivery of it repeated while it is carried out (a
    signal retried across a restart) is ignored "already being …": that is not its refusal.
    """
    for event in state.events:
        if event.kind == "refused" and event.detail.startswith(
            f"TapRaise refused to {refusal.name} "
        ):
            return "TapRaise"
        if event.kind == "ignored" and event.detail.startswith(f"{refusal.name}: "):
            reason = event.detail.removeprefix(f"{refusal.name}: ")
            if not reason.startswith("call is already being"):
                return who_refused(reason)
    if state.phase.is_final:
        return "closed"
    return None


def now_ms() -> datetime:
    return to_millis(datetime.now(UTC))


def instant_key(moment: datetime | str) -> str:
    """An instant as TapRaise keeps it: UTC, milliseconds."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    return to_millis(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")
