"""What one chaos run does: its numbers, and the names it shares with the sandbox."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

HOST: Final = "127.0.0.1"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
FAULT_KINDS: Final = ("all", "tapraise", "kills", "restart", "messages", "follow")
STARTUP_TIMEOUT_SECONDS: Final = 60.0
# How the sandbox labels a request refused during a credential outage.
CREDENTIAL_OUTAGE: Final = "credential_outage"
# A result code outside TapRaise's allow-list for the run.
UNKNOWN_RESULT_CODE: Final = "unknown_code"
# The result code users enter when they complete a call in the TapRaise app: not the agents'
# (`confirmed`), so that the result a call closed with tells whose it is.
APP_RESULT_CODE: Final = "declined"


@dataclass
class ChaosConfig:
    """One chaos run.

    Attributes:
        calls: How many calls the CRM asks for.
        workers: Worker processes on the task queue.
        faults: `all`, or one kind alone: `tapraise`, `kills`, `restart`, `messages`,
            `follow` (the follower switched on, calls requested and changed in the TapRaise app).
        kill_every: Seconds between two worker kills (each kill takes the next worker in turn).
        restart_at: Seconds into the run at which the dev server is stopped and started again.
        seed: Seeds the agents' scripts and the sandbox's fault draws.
        time_budget: Seconds from the first start by which every workflow must be closed.
        heal_window: The faults stop once every agent's script is done, and at the latest this
            many seconds before the end of the budget, so that every call can finish: a local
            activity's retries back off up to five minutes.
        chaos_for: The faults stop after this many seconds at the latest (an outage ends).
        max_active: Calls in flight at once (the CRM batch is sent in pages to keep to it).
        error_share: Share of TapRaise requests answered 500 or 503 (half each).
        rate_limit_share: Share answered 429 with `Retry-After`.
        late_share: Share applied but answered after the client gave up.
        latency_share: Share answered after `latency_seconds`.
        latency_seconds: The slow answers' delay (below the client's timeout).
        late_delay_seconds: How late a late answer comes (above the client's timeout).
        late_apply_share: Share of add-attempt, complete, cancel and expire requests held past
            the client's timeout and applied only then.
        late_apply_delay_seconds: How long such a request is held: above the client's timeout
            (it has given up) and, with a slow start added, below twice it (the retry of a
            timed-out attempt waits that long before it looks).
        credential_outage_at: Seconds into the run at which TapRaise withdraws the credentials.
        credential_outage_seconds: How long every TapRaise request is then answered 401.
        client_timeout_seconds: The workers' TapRaise timeout (`TAPRAISE_TIMEOUT_SECONDS`).
        create_kills: How many bursts of starts are followed by a kill as soon as their creates
            land in TapRaise.
        bare_share: Share of calls started as a plain `temporal workflow start` does.
        refused_share: Share of the calls whose script ends the call (or lets it expire) where
            the agent first sends a final action that must be refused.
        result_codes: TapRaise's allow-list of result codes for the run (`messages`).
        same_id_share: Share of the updates delivered twice that are sent again under the same
            request id rather than a new one (a third of those both at once).
        deadline_seconds: The deadline of the calls whose script lets them expire.
        follow_interval: Seconds between two rounds of the follower (`follow`).
        app_requested_share: Share of the calls requested in the TapRaise app instead of by the
            CRM: the follower must adopt them (`follow`).
        app_changed_share: Share of the CRM's calls that users also change in the TapRaise app
            (complete, cancel, expire, add attempts) while their agents work (`follow`).
        progress: Print a progress line every few seconds (to stderr).
        work_dir: Where the processes keep their files (default: a fresh temporary directory).
    """

    calls: int = 1000
    workers: int = 3
    faults: str = "all"
    kill_every: float = 20.0
    restart_at: float = 45.0
    seed: int = 1
    time_budget: float = 1200.0
    heal_window: float = 330.0
    chaos_for: float = 600.0
    max_active: int = 150
    error_share: float = 0.30
    rate_limit_share: float = 0.10
    late_share: float = 0.05
    latency_share: float = 0.05
    latency_seconds: float = 1.0
    late_delay_seconds: float = 3.0
    late_apply_share: float = 0.05
    late_apply_delay_seconds: float = 2.5
    credential_outage_at: float = 60.0
    credential_outage_seconds: float = 30.0
    client_timeout_seconds: float = 2.0
    create_kills: int = 6
    bare_share: float = 0.15
    refused_share: float = 0.35
    result_codes: tuple[str, ...] = ("confirmed", "declined", "not_reached")
    same_id_share: float = 0.4
    deadline_seconds: float = 15.0
    follow_interval: float = 1.0
    app_requested_share: float = 0.08
    app_changed_share: float = 0.15
    progress: bool = True
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.faults not in FAULT_KINDS:
            raise ValueError(f"faults must be one of {', '.join(FAULT_KINDS)}, not {self.faults!r}")
        if self.late_delay_seconds <= self.client_timeout_seconds:
            raise ValueError("late_delay_seconds must exceed client_timeout_seconds")
        # Applied after the client gave up, and before the retry of a timed-out attempt looks
        # (it waits as long again as the lost request lasted), even when it was slow to start.
        if not (
            self.client_timeout_seconds
            < self.late_apply_delay_seconds
            < 2 * self.client_timeout_seconds - self.latency_seconds
        ):
            raise ValueError(
                "late_apply_delay_seconds must lie between client_timeout_seconds and twice it, "
                "less latency_seconds"
            )
        if self.follow_interval < 1:
            raise ValueError("follow_interval must be at least 1 s (the follower's minimum)")
        if not (0 <= self.app_requested_share <= 1 and 0 <= self.app_changed_share <= 1):
            raise ValueError("app_requested_share and app_changed_share must lie in [0, 1]")
        if "confirmed" not in self.result_codes:
            raise ValueError("result_codes must allow 'confirmed': the agents complete with it")
        if self.has("follow") and self.has("messages") and APP_RESULT_CODE not in self.result_codes:
            raise ValueError(
                f"result_codes must allow {APP_RESULT_CODE!r}: the app completes with it"
            )

    def has(self, kind: str) -> bool:
        """Whether this run injects faults of `kind`."""
        return self.faults in ("all", kind)
