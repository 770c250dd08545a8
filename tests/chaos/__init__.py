"""`python -m tests.chaos` (what `make chaos` runs): calls driven through injected faults, with
every effect accounted for.

The harness starts its own processes on free loopback ports in a temporary directory: the
Temporal dev server on a SQLite file, the TapRaise sandbox, and K workers (`python -m worker`,
configured through their environment like a user's). Then it lets the faults loose, each kind
alone or all together (`--faults`):

- **tapraise**: on every endpoint, 30 % of requests answer 500/503, 10 % 429 with `Retry-After`,
  5 % are applied but answered after the workers' client gave up, and some answer slowly; on
  add-attempt, complete, cancel and expire 5 % more are held past the client's timeout and
  applied only then (after the client gave up, before a retry looks: the retry of a timed-out
  attempt waits as long again as the lost request lasted); and once, while calls are active,
  TapRaise withdraws the credentials for 30 s (every request answered 401);
- **kills**: every `--kill-every` seconds one worker is SIGKILLed and started again, in turn;
  and right after the creates of a burst of starts land in TapRaise (their answers held back),
  one worker is SIGKILLed, so that first workflow tasks are redone by another worker after
  TapRaise applied the create;
- **restart**: once, at `--restart-at`, the dev server is stopped (SIGTERM) and started again on
  the same SQLite file, and every client has to reconnect;
- **messages**: signals and updates delivered twice, some updates sent again under the same
  request id (one after the other, or both at once), the CRM batch started twice, a completion
  racing a cancellation, a completion arriving while the create is still being retried, and
  final actions that must be refused (a result code outside TapRaise's allow-list, a time before
  the call was requested) before the agent goes on with its script;
- **follow**: the TapRaise follower is switched on (`FollowerService.start`, every
  `--follow-interval` seconds, following from the run's start, on the workers' task queue, so
  that kills and the restart hit it too, and the TapRaise faults its list and mark-processed
  requests), and users of the TapRaise app (the sandbox's `/_sandbox/app/` routes, never
  faulted) act alongside: a share of the calls (`--app-requested-share`) is requested in the
  app, never by the CRM, and must be adopted by the follower before their agents drive them or
  the app completes, cancels or expires them; a share of the CRM's calls
  (`--app-changed-share`) is completed, cancelled or expired there, or gets attempts added
  there, while their agents are still sending messages.

With `kills` or `messages`, a share of the calls is started the way a plain `temporal workflow
start` does: only the input (no `requestedAt`, no search attributes), id `call-<uuid>`.

Each call has an agent with a deterministic script chosen from the call's index (two unanswered
attempts then complete; cancel; attempts until the maximum; left to expire at its deadline; …).
The agents keep a ledger of what they reported and what the workflow accepted or refused. Once
every agent's script is done (at the latest after `--chaos-for` seconds, or `--heal-window`
seconds before the end of the budget) the faults stop, as outages do, and every call must then
close within the budget. At the end the harness checks, from the sandbox's request log and state
and from each workflow's final `state` and history: exactly one successful create per call and
the `requestedAt` TapRaise holds the one the workflow holds, exactly as many attempts in TapRaise
as were accepted, exactly one final action matching the agents' or the policy's, nothing applied
for a message that was refused, the same answer to both sends of one request id, the workflow
closed in the phase TapRaise holds, no call `failed` (only a refused create may fail one), and
every workflow closed within the time budget. With `follow` also: every call requested in the app
adopted (a workflow exists) by one workflow run whose create found the call (no 201 for it) and
adopted it once; every call the app made final closed in that phase with no final action of its
own applied, the agents never told it closed otherwise, the app's result kept; no change of the
API applied after the app made its call final (those TapRaise refused, 400 or 409, are counted);
attempts added in the app held by TapRaise and by the workflow alike. It prints the figures and
exits non-zero when anything was lost, duplicated, mismatched, stuck or failed.

    python -m tests.chaos                          # 1,000 calls, every fault kind at once
    python -m tests.chaos --calls 100 --kill-every 5 --restart-at 15 --time-budget 110 \
        --heal-window 65 --credential-outage-at 3 --credential-outage-seconds 5
    python -m tests.chaos --faults kills           # one kind alone
    python -m tests.chaos --calls 60 --faults follow --time-budget 90 --heal-window 40
"""

from tests.chaos.config import ChaosConfig
from tests.chaos.plans import chaos_policy
from tests.chaos.report import ChaosReport
from tests.chaos.run import run_chaos

__all__ = ["ChaosConfig", "ChaosReport", "chaos_policy", "run_chaos"]
