"""Every ledger compared with what TapRaise and Temporal hold at the end."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle

from tests.chaos.config import UNKNOWN_RESULT_CODE
from tests.chaos.evidence import (
    REFUSED,
    AppView,
    app_view,
    carries,
    first_task_redone,
    looked_at_after,
    same_answer,
    stuck_waits,
    update_outcomes,
)
from tests.chaos.ledger import ADOPTED, APP_FINALS, Ledger, instant_key, refusal_in_events
from tests.chaos.retrying import retry
from workflows.messages import CallState

_FINAL_ACTION: Final = {"completed": "complete", "cancelled": "cancel", "expired": "expire"}


@dataclass
class Findings:
    lost: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    mismatched: set[str] = field(default_factory=set)
    stuck: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    resolved: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    first_tasks_redone: int = 0
    refused_by: Counter[str] = field(default_factory=Counter)
    refused_sent: Counter[str] = field(default_factory=Counter)
    # Following TapRaise: calls requested in the app that have a workflow, adopted more than
    # once, marked processed; changes made in the app ("complete applied", "cancel refused"…);
    # calls the app made final, by how their workflow learned it; the API's changes TapRaise
    # looked at after the app had made the call final ("expire 400"…); attempts added in the app.
    adopted: int = 0
    adopted_twice: set[str] = field(default_factory=set)
    marked: int = 0
    app_changes: Counter[str] = field(default_factory=Counter)
    closed_in_app: Counter[str] = field(default_factory=Counter)
    after_app_final: Counter[str] = field(default_factory=Counter)
    app_attempts: int = 0

    def add(self, kind: str, ledger: Ledger, message: str) -> None:
        getattr(self, kind).add(ledger.call_uuid)
        self.problems.append(f"{kind}: call {ledger.call_uuid} ({ledger.label}): {message}")


class Checker:
    """Compares every ledger with what TapRaise and Temporal hold."""

    def __init__(self, client: Client, sandbox_url: str, admin_headers: dict[str, str]) -> None:
        self.client = client
        self.admin = httpx.AsyncClient(
            base_url=f"{sandbox_url}/_sandbox", headers=admin_headers, timeout=30
        )
        self.found = Findings()

    async def check(self, ledgers: list[Ledger], second_batch_started: list[str]) -> Findings:
        """Check every call; return what was found."""
        creates = (
            await self.admin.get("/requests", params={"endpoint": "create", "limit": 100_000})
        ).json()
        successful: Counter[str] = Counter(
            r["callUuid"] for r in creates["requests"] if r["status"] == 201
        )
        runs = await self._runs_per_workflow()
        started_twice = set(second_batch_started)
        marks = await self._marks() if any(ledger.in_app for ledger in ledgers) else set()
        limit = asyncio.Semaphore(16)

        async def one(ledger: Ledger) -> None:
            async with limit:
                try:
                    await self._check_call(ledger, successful, runs, started_twice, marks)
                except Exception as exc:  # a check that cannot run is itself a finding
                    self.found.add("mismatched", ledger, f"could not check: {exc!r}")

        await asyncio.gather(*(one(ledger) for ledger in ledgers))
        await self.admin.aclose()
        return self.found

    async def _marks(self) -> set[tuple[str, str]]:
        """The calls marked processed in TapRaise: (call uuid, the consumer's identifier)."""
        answer = await self.admin.get("/marks", params={"entityName": "call"})
        return {(m["entityUuid"], m["consumerIdentifier"]) for m in answer.json()["marks"]}

    async def _runs_per_workflow(self) -> Counter[str]:
        runs: Counter[str] = Counter()

        async def listing() -> None:
            runs.clear()
            async for execution in self.client.list_workflows("WorkflowType = 'CallWorkflow'"):
                runs[execution.id] += 1

        await retry(listing, time.monotonic() + 60)
        return runs

    async def _check_call(
        self,
        ledger: Ledger,
        successful: Counter[str],
        runs: Counter[str],
        started_twice: set[str],
        marks: set[tuple[str, str]],
    ) -> None:
        if not self._check_runs(ledger, runs, started_twice):
            return
        created = successful[ledger.call_uuid]
        stored, effects, log = await self._sandbox_view(ledger.call_uuid)
        app = app_view(log)
        for action, status in app.changes:
            answer = "applied" if 200 <= status < 300 else "refused"
            self.found.app_changes[f"{'request' if action == 'create' else action} {answer}"] += 1
        if ledger.in_app:
            self._check_adopted(ledger, created, stored, effects, runs)
            self.found.marked += (ledger.call_uuid, ledger.workflow_id) in marks
        else:
            self._check_creates(ledger, created, stored, effects)
        handle = self.client.get_workflow_handle(ledger.workflow_id, result_type=CallState)
        for refusal in ledger.refusals:
            self.found.refused_sent[refusal.via] += 1
        if await first_task_redone(handle, log):
            self.found.first_tasks_redone += 1
        state = await self._final_state(ledger, handle, log, created)
        if state is None:
            return
        self.found.phases[state.phase.value] += 1
        await self._resolve_unknown_updates(ledger, handle)
        if ledger.in_app:
            self._check_adoptions_in_history(ledger, state)
        if app.final is not None:
            self._check_final_in_app(ledger, state, effects, stored, app, log)
        else:
            self._check_final(ledger, state, effects)
        self._check_attempts(ledger, state, effects, stored, app)
        self._check_requested_at(ledger, state, stored)
        self._check_refusals(ledger, state, stored, log)
        self._check_same_id(ledger)
        if stored is not None and (
            stored["status"] != state.phase.value
            or (state.status is not None and state.status.value != stored["status"])
        ):
            self.found.add(
                "mismatched",
                ledger,
                f"workflow closed {state.phase.value}, TapRaise holds {stored['status']}",
            )

    def _check_runs(self, ledger: Ledger, runs: Counter[str], started_twice: set[str]) -> bool:
        """The call was started once, as one workflow run; False: there is nothing more to check."""
        found = self.found
        for note in ledger.notes:
            found.add("mismatched", ledger, note)
        if not ledger.started:
            if ledger.in_app:
                found.add("lost", ledger, "never adopted: no workflow by the end of the budget")
            else:
                found.add("lost", ledger, "never started (every start failed)")
            return False
        if runs[ledger.workflow_id] == 0:
            found.add("lost", ledger, "no workflow exists")
            return False
        if runs[ledger.workflow_id] > 1:
            found.add("duplicated", ledger, f"{runs[ledger.workflow_id]} workflow runs")
        if ledger.call_uuid in started_twice:
            found.add("mismatched", ledger, "the batch's second start answered 'started'")
        return True

    async def _sandbox_view(
        self, cid: str
    ) -> tuple[dict[str, Any] | None, dict[str, int], list[dict[str, Any]]]:
        """What TapRaise holds of a call: the call (None: none), its effects, its request log."""
        stored_response = await self.admin.get(f"/calls/{cid}")
        stored = stored_response.json() if stored_response.status_code == 200 else None
        effects: dict[str, int] = (await self.admin.get(f"/calls/{cid}/effects")).json()
        log: list[dict[str, Any]] = (
            await self.admin.get("/requests", params={"callUuid": cid, "limit": 100_000})
        ).json()["requests"]
        return stored, effects, log

    def _check_creates(
        self, ledger: Ledger, created: int, stored: dict[str, Any] | None, effects: dict[str, int]
    ) -> None:
        """TapRaise holds the call, created exactly once."""
        if stored is None:
            self.found.add("lost", ledger, "TapRaise has no such call")
        if created > 1 or effects.get("create", 0) > 1:
            self.found.add("duplicated", ledger, f"{created} successful creates, effects {effects}")
        elif stored is not None and created != 1:
            self.found.add("mismatched", ledger, f"{created} successful creates in the log")

    def _check_adopted(
        self,
        ledger: Ledger,
        created: int,
        stored: dict[str, Any] | None,
        effects: dict[str, int],
        runs: Counter[str],
    ) -> None:
        """A call requested in the app: adopted by one workflow run, never created again."""
        found = self.found
        found.adopted += 1
        if runs[ledger.workflow_id] > 1:
            found.adopted_twice.add(ledger.call_uuid)
        if stored is None:
            found.add("lost", ledger, "TapRaise has no such call")
        if created or effects.get("create", 0):
            found.add(
                "duplicated",
                ledger,
                f"the call the app requested was created again ({created} creates answered 201, "
                f"effects {effects})",
            )

    def _check_adoptions_in_history(self, ledger: Ledger, state: CallState) -> None:
        """The workflow adopted the call TapRaise holds exactly once (its create or the
        follower's listing found it)."""
        adoptions = [
            event
            for event in state.events
            if event.kind == "adopted" and event.detail.startswith("call already in TapRaise as ")
        ]
        # A call that continued as new carries only its latest events: the adoption may be gone.
        continued = any(event.kind == "continued" for event in state.events)
        if len(adoptions) > 1 or (not adoptions and not continued):
            if len(adoptions) > 1:
                self.found.adopted_twice.add(ledger.call_uuid)
            self.found.add(
                "duplicated" if adoptions else "mismatched",
                ledger,
                f"{len(adoptions)} adoptions of the call the app requested in the call's events",
            )

    async def _final_state(
        self,
        ledger: Ledger,
        handle: WorkflowHandle[Any, CallState],
        log: list[dict[str, Any]],
        created: int,
    ) -> CallState | None:
        """The closed workflow's final state; None when it is still running or failed."""
        description = await retry(handle.describe, time.monotonic() + 30)
        if description.status == WorkflowExecutionStatus.RUNNING:
            waits = await stuck_waits(handle, description)
            self.found.add("stuck", ledger, "still running at the end of the time budget")
            self.found.stuck_details.append(
                f"call {ledger.call_uuid} ({ledger.label}): " + "; ".join(waits)
            )
            return None
        try:
            state: CallState = await retry(handle.result, time.monotonic() + 30)
        except WorkflowFailureError as exc:
            self.found.phases["failed"] += 1
            # Only a create TapRaise refused for good may fail a call; the harness sends none.
            refused = [r for r in log if r["endpoint"] == "create" and r["status"] in REFUSED]
            if not refused or created:
                self.found.add("failed", ledger, f"workflow failed: {exc.cause or exc}")
            return None
        return state

    def _check_final(self, ledger: Ledger, state: CallState, effects: dict[str, int]) -> None:
        """Exactly one final action, the one the agents asked for or the policy dictates."""
        found = self.found
        finals = {a: effects.get(a, 0) for a in ("complete", "cancel", "expire")}
        if sum(finals.values()) > 1:
            found.add("duplicated", ledger, f"final actions applied {finals}")
        elif sum(finals.values()) == 0:
            found.add("lost", ledger, f"no final action reached TapRaise (phase {state.phase})")
        accepted = ledger.finals("accepted")
        if len(accepted) > 1:
            found.add("mismatched", ledger, f"two final actions accepted: {sorted(accepted)}")
            return
        expected = _expected_finals(ledger, state, accepted)
        if expected is None:
            found.add("mismatched", ledger, f"no final action was accepted; phase {state.phase}")
            return
        phase = state.phase.value
        if phase not in expected:
            found.add(
                "mismatched",
                ledger,
                f"closed {phase} ({state.final_reason}), expected {' or '.join(sorted(expected))}",
            )
        elif finals.get(_FINAL_ACTION[phase], 0) != 1:
            found.add("mismatched", ledger, f"closed {phase}, TapRaise final actions {finals}")
        reason = state.final_reason or ""
        if (
            phase == "expired"
            and ledger.expire_reason
            and not accepted
            # A call expired by a worker that died before recording it is adopted from TapRaise.
            and reason != ADOPTED
            # Its own expiry, applied by TapRaise while its answer was lost (a late answer, a run
            # continued as new in an outage), may reach it first through the follower; exactly
            # one expire applied is checked above.
            and reason != "expired in TapRaise"
            and ledger.expire_reason not in reason
        ):
            found.add(
                "mismatched",
                ledger,
                f"expired for {state.final_reason!r}, expected {ledger.expire_reason}",
            )

    def _check_final_in_app(
        self,
        ledger: Ledger,
        state: CallState,
        effects: dict[str, int],
        stored: dict[str, Any] | None,
        app: AppView,
        log: list[dict[str, Any]],
    ) -> None:
        """A call the app made final: closed in that phase, no final action of its own applied,
        its agent never told it closed otherwise, the app's result kept, and none of the API's
        changes applied after the app's (those TapRaise refused are counted)."""
        found = self.found
        assert app.final is not None and app.final_action is not None
        phase = APP_FINALS[app.final_action]
        finals = {a: effects.get(a, 0) for a in ("complete", "cancel", "expire")}
        if sum(finals.values()):
            found.add("duplicated", ledger, f"final actions applied {finals} besides the app's")
        if state.phase.value != phase:
            found.add(
                "mismatched",
                ledger,
                f"closed {state.phase.value} ({state.final_reason}), the app had {phase} it",
            )
        told = ledger.updates_accepted() - {phase}
        if told:
            found.add(
                "mismatched",
                ledger,
                f"the agent was told the call was {' and '.join(sorted(told))}; the app had "
                f"{phase} it",
            )
        if phase == "completed":
            held = ((stored or {}).get("result") or {}).get("resultCode")
            shown = state.result.result_code if state.result is not None else None
            if shown != held:
                found.add(
                    "mismatched", ledger, f"the workflow holds result {shown}, TapRaise {held}"
                )
        found.closed_in_app[_learned(state, phase)] += 1
        for request in looked_at_after(log, app.final):
            found.after_app_final[f"{request['endpoint']} {request['status']}"] += 1
            if 200 <= request["status"] < 300:
                found.add(
                    "duplicated",
                    ledger,
                    f"TapRaise applied {request['endpoint']} (request {request['id']}) after the "
                    f"app had {phase} the call",
                )

    def _check_attempts(
        self,
        ledger: Ledger,
        state: CallState,
        effects: dict[str, int],
        stored: dict[str, Any] | None,
        app: AppView,
    ) -> None:
        """Exactly the attempts accepted and added in the app, each once, in TapRaise and in
        the workflow."""
        found = self.found
        in_tapraise = [instant_key(a["attemptAt"]) for a in (stored or {}).get("attempts", [])]
        recorded = set(in_tapraise)
        by_api = [at for at in in_tapraise if at not in app.attempts]
        found.app_attempts += len(recorded & app.attempts)
        if len(in_tapraise) != len(recorded) or effects.get("add-attempt", 0) != len(by_api):
            found.add(
                "duplicated",
                ledger,
                f"TapRaise recorded {effects.get('add-attempt', 0)} attempts for "
                f"{len(by_api)} distinct reports (and {len(recorded & app.attempts)} added in "
                "the app)",
            )
        missing = (ledger.accepted_attempts | app.attempts) - recorded
        if missing:
            found.add("lost", ledger, f"accepted attempts not in TapRaise: {sorted(missing)}")
        unexplained = recorded - ledger.accepted_attempts - ledger.unknown_attempts - app.attempts
        if unexplained:
            found.add("duplicated", ledger, f"attempts nobody reported: {sorted(unexplained)}")
        in_workflow = sorted(instant_key(a.attempt_at) for a in state.attempts)
        if in_workflow != sorted(in_tapraise):
            found.add(
                "mismatched",
                ledger,
                f"workflow holds attempts {in_workflow}, TapRaise {sorted(in_tapraise)}",
            )

    def _check_requested_at(
        self, ledger: Ledger, state: CallState, stored: dict[str, Any] | None
    ) -> None:
        """One `requestedAt` everywhere: the start's stamp, the workflow's, TapRaise's.

        A bare start has none: the workflow's is its run's start time, and a first workflow task
        redone after the create cannot have changed it (TapRaise holds the first one).
        """
        held = instant_key(state.requested_at)
        sent = ledger.call.requested_at
        if sent is not None and instant_key(sent) != held:
            self.found.add(
                "mismatched",
                ledger,
                f"the workflow holds requestedAt {held}, the start sent {instant_key(sent)}",
            )
        in_tapraise = None if stored is None else instant_key(stored["requestedAt"])
        if in_tapraise is not None and in_tapraise != held:
            self.found.add(
                "mismatched",
                ledger,
                f"the workflow holds requestedAt {held}, TapRaise {in_tapraise}",
            )

    def _check_refusals(
        self,
        ledger: Ledger,
        state: CallState,
        stored: dict[str, Any] | None,
        log: list[dict[str, Any]],
    ) -> None:
        """A message that must be refused is refused, and TapRaise applied nothing of it."""
        found = self.found
        for refusal in ledger.refusals:
            applied = [
                r
                for r in log
                if r["endpoint"] == refusal.name
                and 200 <= r["status"] < 300
                and carries(r["requestBody"], refusal.field, refusal.value)
            ]
            if applied:
                found.add(
                    "mismatched",
                    ledger,
                    f"a {refusal.name} with {refusal.field} {refusal.value} was applied in "
                    f"TapRaise (request {applied[0]['id']}, answered {applied[0]['status']})",
                )
            update = refusal.update
            if (
                update is not None
                and update.outcome == "accepted"
                and "queued" not in update.detail
            ):
                found.add(
                    "mismatched",
                    ledger,
                    f"a {refusal.name} that must be refused ({refusal.why}) was answered "
                    f"{update.detail!r}",
                )
            if refusal.refused_by is None:
                refusal.refused_by = refusal_in_events(state, refusal)
            found.refused_by[refusal.refused_by or "nobody seen"] += 1
        result = (stored or {}).get("result") or {}
        if result.get("resultCode") == UNKNOWN_RESULT_CODE:
            found.add("mismatched", ledger, "TapRaise holds a result code it refuses")

    def _check_same_id(self, ledger: Ledger) -> None:
        """Both sends of one request id got the same answer (and the effects are checked once)."""
        for update in ledger.updates:
            if update.repeat is None:
                continue
            first = (update.outcome, update.detail)
            if "unknown" in (first[0], update.repeat[0]):
                continue  # an answer lost with a restart says nothing either way
            if not same_answer(first, update.repeat):
                self.found.add(
                    "mismatched",
                    ledger,
                    f"{update.name} {update.id} answered {first} and, sent again under the "
                    f"same id, {update.repeat}",
                )

    async def _resolve_unknown_updates(
        self, ledger: Ledger, handle: WorkflowHandle[Any, Any]
    ) -> None:
        unknown = [u for u in ledger.updates if u.outcome == "unknown"]
        if not unknown:
            return
        outcomes = await retry(lambda: update_outcomes(handle), time.monotonic() + 30)
        for update in unknown:
            if update.id in outcomes:
                self.found.resolved += 1
                ledger.judge(update, outcomes[update.id])


def _learned(state: CallState, phase: str) -> str:
    """How a call the app made final learned it, from its final reason."""
    reason = state.final_reason or ""
    if reason == f"{phase} in TapRaise":
        return "told by the follower"
    if reason == ADOPTED:
        return "found by its create"
    if reason == f"already {phase} in TapRaise":
        return "its action refused"
    # Its own final action answered 409 "already <phase>": taken as its own, done.
    return "its action answered 409"


def _expected_finals(ledger: Ledger, state: CallState, accepted: set[str]) -> set[str] | None:
    """The phases the call may have closed in; None when no final action was accepted."""
    unknown = ledger.finals("unknown") | ledger.finals("rejected")
    # How a call learns the state TapRaise holds: its create, its own action refused, or the
    # follower telling it.
    adopted = (
        ADOPTED,
        f"already {state.phase.value} in TapRaise",
        f"{state.phase.value} in TapRaise",
    )
    if not accepted and state.final_reason in adopted:
        # A worker died after TapRaise applied a final action it carried out, before its task
        # was recorded: the message is lost with the task (an update is kept only once
        # accepted), and the call took the state TapRaise holds. Any final action the
        # agents sent may be the one applied, whatever the answers they got afterwards (the
        # other of two racing ones accepted, this one refused "already being …").
        unknown |= ledger.finals_sent()
    if accepted:
        return accepted
    if unknown:
        # An answer lost with a killed worker or a restart: TapRaise may hold either.
        return unknown | ({"expired"} if ledger.expire_reason else set())
    if ledger.expire_reason:
        return {"expired"}
    return None
