"""`python -m tests.chaos`: the command line."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Final

from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

from tests.chaos.config import FAULT_KINDS, ChaosConfig
from tests.chaos.run import run_chaos
from tests.keys_fixture import use_run_keys

# The options that set the `ChaosConfig` field of their own name.
_CONFIG_OPTIONS: Final = (
    "calls",
    "workers",
    "faults",
    "kill_every",
    "restart_at",
    "seed",
    "time_budget",
    "heal_window",
    "chaos_for",
    "max_active",
    "credential_outage_at",
    "credential_outage_seconds",
    "create_kills",
    "follow_interval",
    "app_requested_share",
    "app_changed_share",
    "work_dir",
)


def _parser() -> argparse.ArgumentParser:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Drive calls through TapRaise faults, worker kills, a server restart, "
        "duplicate or refused messages, and calls requested and changed in the TapRaise app "
        "while the follower follows it; check that nothing is lost, duplicated, mismatched, "
        "stuck or failed.",
    )
    parser.add_argument("--calls", type=int, default=defaults.calls)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--faults", choices=FAULT_KINDS, default=defaults.faults)
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every, metavar="S")
    parser.add_argument("--restart-at", type=float, default=defaults.restart_at, metavar="S")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--time-budget", type=float, default=defaults.time_budget, metavar="S")
    parser.add_argument("--heal-window", type=float, default=defaults.heal_window, metavar="S")
    parser.add_argument("--chaos-for", type=float, default=defaults.chaos_for, metavar="S")
    parser.add_argument("--max-active", type=int, default=defaults.max_active)
    parser.add_argument(
        "--credential-outage-at", type=float, default=defaults.credential_outage_at, metavar="S"
    )
    parser.add_argument(
        "--credential-outage-seconds",
        type=float,
        default=defaults.credential_outage_seconds,
        metavar="S",
        help="0: no credential outage.",
    )
    parser.add_argument("--create-kills", type=int, default=defaults.create_kills)
    parser.add_argument(
        "--follow-interval", type=float, default=defaults.follow_interval, metavar="S"
    )
    parser.add_argument(
        "--app-requested-share",
        type=float,
        default=defaults.app_requested_share,
        help="Share of the calls requested in the TapRaise app (the follower adopts them).",
    )
    parser.add_argument(
        "--app-changed-share",
        type=float,
        default=defaults.app_changed_share,
        help="Share of the CRM's calls also changed in the TapRaise app.",
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true", help="No progress lines.")
    return parser


def _quiet_sdk_logs() -> None:
    """Keep the SDK's own retry warnings (expected during a restart) off the terminal."""
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    runtime = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))
    Runtime.set_default(runtime, error_if_already_set=False)


def main(argv: list[str] | None = None) -> None:
    """Run from the command line; exit 1 when anything was lost, duplicated, mismatched or stuck."""
    args = _parser().parse_args(argv)
    # Every process of the run (workers, sandbox, checks) reads one key from the environment.
    use_run_keys()
    _quiet_sdk_logs()
    options = {name: getattr(args, name) for name in _CONFIG_OPTIONS}
    config = ChaosConfig(**options, progress=not args.quiet)
    try:
        report = asyncio.run(run_chaos(config))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    print("\n".join(report.lines()))
    raise SystemExit(0 if report.ok else 1)
