"""What a chaos run found, and how it is printed."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tests.chaos.config import CREDENTIAL_OUTAGE


@dataclass
class FollowReport:
    """What following TapRaise did in a run (`follow`).

    Attributes:
        interval: Seconds between the follower's rounds.
        rounds / failed_rounds: The follower's rounds, and those that failed (its status).
        follower_adopted / delivered / ignored: The follower's own counts of calls it started,
            changes it told a running workflow, changes it left (its status; a round run again
            may count twice, a failed round not at all).
        status_error: Why the follower's status could not be read, if it could not.
        last_error: The last error the follower noted (a failed round, a refused mark).
        list_requests / list_faulted: The follower's `GET /api/v1/calls?updatedAfter=…`
            requests, and those a fault (or the credential outage) answered.
        mark_requests / mark_faulted: Its mark-processed requests, and those faulted.
        requested_in_app: Calls requested in the TapRaise app.
        adopted: Of those, the calls with a workflow at the end.
        adopted_twice: Calls with more than one workflow run, or adopted more than once in one.
        marked: Calls marked processed with their workflow id as the consumer's identifier.
        lags: Seconds from each request in the app to its workflow.
        changed_in_app: The CRM's calls that users also changed in the app.
        app_changes: Changes made in the app, by action and answer ("complete applied").
        closed_in_app: Calls the app made final, by how their workflow learned it.
        after_app_final: The API's changes TapRaise looked at after the app had made the call
            final, by endpoint and answer ("expire 400"): each must be refused.
        app_attempts: Attempts added in the app that TapRaise holds (each counted by its
            workflow, or the run would show a mismatch).
    """

    interval: float
    rounds: int = 0
    failed_rounds: int = 0
    follower_adopted: int = 0
    delivered: int = 0
    ignored: int = 0
    status_error: str | None = None
    last_error: str | None = None
    list_requests: int = 0
    list_faulted: int = 0
    mark_requests: int = 0
    mark_faulted: int = 0
    requested_in_app: int = 0
    adopted: int = 0
    adopted_twice: int = 0
    marked: int = 0
    lags: list[float] = field(default_factory=list)
    changed_in_app: int = 0
    app_changes: dict[str, int] = field(default_factory=dict)
    closed_in_app: dict[str, int] = field(default_factory=dict)
    after_app_final: dict[str, int] = field(default_factory=dict)
    app_attempts: int = 0

    @property
    def applied_after_app_final(self) -> int:
        """API changes TapRaise applied after the app had made their call final (must be 0)."""
        return sum(n for key, n in self.after_app_final.items() if key.endswith(" 200"))

    def lines(self) -> list[str]:
        """The follower's lines of the report."""
        if self.status_error is None:
            follower = (
                f"every {self.interval:g} s: {self.rounds} rounds ({self.failed_rounds} failed), "
                f"adopted {self.follower_adopted}, told {self.delivered}, left {self.ignored}"
            )
        else:
            follower = f"every {self.interval:g} s; status unreadable: {self.status_error}"
        lag = (
            f"after {statistics.median(self.lags):.1f} s median, {max(self.lags):.1f} s at most"
            if self.lags
            else "none adopted"
        )
        changes = ", ".join(f"{k} {v}" for k, v in sorted(self.app_changes.items())) or "none"
        closed = ", ".join(f"{k} {v}" for k, v in sorted(self.closed_in_app.items())) or "none"
        after = ", ".join(f"{k} {v}" for k, v in sorted(self.after_app_final.items())) or "none"
        lines = [
            f"follower              {follower}",
            f"follower's requests   list {self.list_requests} ({self.list_faulted} faulted), "
            f"mark-processed {self.mark_requests} ({self.mark_faulted} faulted)",
            f"requested in the app  {self.requested_in_app}: adopted {self.adopted} ({lag}), "
            f"adopted twice {self.adopted_twice}, marked processed {self.marked}",
            f"changed in the app    {self.changed_in_app} CRM calls; {changes}",
            f"closed by the app     {sum(self.closed_in_app.values())} ({closed})",
            f"after the app's final {sum(self.after_app_final.values())} API changes looked at "
            f"({after}); applied {self.applied_after_app_final}",
            f"attempts in the app   {self.app_attempts} held by TapRaise and their workflows",
        ]
        if self.last_error:
            lines.insert(1, f"follower's last error {self.last_error[:160]}")
        return lines


@dataclass
class ChaosReport:
    """What a chaos run found: lost, duplicated, mismatched, stuck and failed must all be 0.

    Attributes:
        calls: Calls the CRM asked for.
        faults_injected: TapRaise faults per kind (`500`, `503`, `429`, `late`, `latency`).
        tapraise_requests: Requests TapRaise received.
        kills: Workers SIGKILLed.
        worker_exits: Workers that exited on their own (and were started again).
        restarts: Dev server restarts.
        duplicate_deliveries: Messages and starts the agents delivered a second time.
        races: Completion-versus-cancellation races run.
        bare_starts: Calls started without `requestedAt` and search attributes.
        create_kills: Kills right after a burst's creates landed in TapRaise.
        first_tasks_redone: Calls whose first workflow task ended unfinished after TapRaise had
            applied their create (the next one found the call and adopted it).
        credential_outage: When the credentials were withdrawn (seconds into the run) and for
            how long, or None.
        same_id_retries: Updates sent a second time under the same request id.
        same_id_concurrent: Of those, the ones whose two sends were in flight at once.
        refused_sent: Final actions sent that must be refused, by `update` and by `signal`.
        refused_by: Who refused them: `TapRaise`, `workflow`, `closed` (the call had closed).
        lost / duplicated / mismatched / stuck: Calls with each kind of problem.
        failed: Calls that ended in phase `failed` although TapRaise never refused their create.
        problems: One line per problem found.
        stuck_details: For every call still open at the end, what it waits on.
        resolved_from_history: Updates whose answer the agent never got (the server restarted
            under it), judged from the workflow's history instead.
        elapsed: Seconds from the first start to the last check.
        final_phases: How many calls ended in each phase.
        follow: What following TapRaise did, when the run followed it.
    """

    calls: int
    faults_injected: dict[str, int] = field(default_factory=dict)
    tapraise_requests: int = 0
    kills: int = 0
    worker_exits: int = 0
    restarts: int = 0
    duplicate_deliveries: int = 0
    races: int = 0
    bare_starts: int = 0
    create_kills: int = 0
    first_tasks_redone: int = 0
    credential_outage: tuple[float, float] | None = None
    same_id_retries: int = 0
    same_id_concurrent: int = 0
    refused_sent: dict[str, int] = field(default_factory=dict)
    refused_by: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    mismatched: int = 0
    stuck: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    stuck_details: list[str] = field(default_factory=list)
    resolved_from_history: int = 0
    elapsed: float = 0.0
    healed_at: float | None = None
    final_phases: dict[str, int] = field(default_factory=dict)
    follow: FollowReport | None = None

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, mismatched, stuck or failed."""
        return not (self.lost or self.duplicated or self.mismatched or self.stuck or self.failed)

    def lines(self) -> list[str]:
        """The report as printed."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_injected.items())) or "none"
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.final_phases.items())) or "none"
        if self.credential_outage is not None:
            at, seconds = self.credential_outage
            outage = (
                f"{seconds:.0f} s from {at:.0f} s "
                f"({self.faults_injected.get(CREDENTIAL_OUTAGE, 0)} requests answered 401)"
            )
        else:
            outage = "none"
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.refused_by.items())) or "none"
        lines = [
            f"calls                 {self.calls} in {self.elapsed:.0f} s ({phases})",
            f"bare starts           {self.bare_starts} (no requestedAt, no search attributes)",
            f"TapRaise faults       {sum(self.faults_injected.values())} of "
            f"{self.tapraise_requests} requests ({faults})",
            f"credential outage     {outage}",
            f"worker kills          {self.kills} (+ {self.worker_exits} exits on their own), "
            f"{self.create_kills} right after a burst's creates landed",
            f"first tasks redone    {self.first_tasks_redone} after TapRaise applied the create",
            f"server restarts       {self.restarts}",
            f"faults stopped at     {self.healed_at:.0f} s"
            if self.healed_at is not None
            else "faults stopped at     the end",
            f"duplicate deliveries  {self.duplicate_deliveries} (signals, updates, batch starts)",
            f"same request id       {self.same_id_retries} updates sent twice "
            f"({self.same_id_concurrent} both at once)",
            f"refused final actions {self.refused_sent.get('update', 0)} by update, "
            f"{self.refused_sent.get('signal', 0)} by signal; refused by {by}",
            f"races                 {self.races} completion-vs-cancellation",
            f"answers from history  {self.resolved_from_history}",
            *(self.follow.lines() if self.follow is not None else []),
            f"lost {self.lost} · duplicated {self.duplicated} · mismatched {self.mismatched} · "
            f"stuck {self.stuck} · failed {self.failed}",
        ]
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems[:40]]
            if len(self.problems) > 40:
                lines.append(f"  … and {len(self.problems) - 40} more")
        if self.stuck_details:
            lines.append("still open:")
            lines += [f"  {d}" for d in self.stuck_details[:20]]
        lines.append(
            "OK: nothing lost, duplicated, mismatched, stuck or failed" if self.ok else "FAILED"
        )
        return lines
