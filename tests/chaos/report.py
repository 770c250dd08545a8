"""What a chaos run found, and how it is printed."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.chaos.config import CREDENTIAL_OUTAGE


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
