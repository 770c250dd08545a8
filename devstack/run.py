"""Running the embedded stack: `python -m devstack` or `python -m starter dev` (`make run`).

The stack starts, prints where everything is, optionally runs the demo, and runs until Ctrl-C
or SIGTERM, which stop the processes it started (and nothing else). State lives under the data
directory (default `.data/`): the dev server's SQLite file, the sandbox's store and the
gateway's token. A second run resumes where the first stopped.

Once up, the stack prints a guide: where everything runs, and lines for another terminal. Its
`export` lines (`TOKEN`, `PERSON`, with the demo `CALL`) are also written to
`<data dir>/demo.env`, for `source`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from pydantic import ValidationError

from devstack.follow_demo import DEMO_INTERVAL, start_following
from devstack.options import build_parser
from devstack.process import ChildError, shown, write_private
from devstack.stack import Stack, StackConfig, use_local_temporal
from gateway.settings import GatewaySettings, GatewaySettingsError
from sandbox.seed import DEMO_PERSON_UUIDS
from tapraise.settings import TapRaiseSettings
from workflows.following import DEFAULT_INTERVAL

T = TypeVar("T")
Say = Callable[[str], None]

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
# The options that are StackConfig fields of the same name and value.
_AS_GIVEN: Final = (
    "temporal_port", "ui_port", "sandbox_port", "gateway_port", "codec_port", "metrics_port",
    "gateway_metrics_port", "namespace", "follow", "startup_timeout",
)  # fmt: skip

# The person the pasted `PERSON` names: the first of the sandbox's demo persons.
EXAMPLE_PERSON: Final = DEMO_PERSON_UUIDS[0]


def paste_lines(config: StackConfig, stack: Stack, call: str | None = None) -> list[str]:
    """The `export` lines that set up another terminal for this stack.

    `TEMPORAL_ADDRESS`/`TEMPORAL_NAMESPACE` point the CLI and the plain `temporal` CLI at this
    stack, `TEMPORAL_CODEC_ENDPOINT` the plain `temporal` CLI at its codec server,
    `ENCRYPTION_KEYS_FILE` our CLI at its payload encryption key, `GATEWAY` is the gateway's
    URL, `TOKEN` its token when it is the stack's own (a configured one is named, never shown),
    `PERSON` a demo person of the sandbox, `CALL` the call to drive by hand (if any).
    """
    lines = [
        f"export TEMPORAL_ADDRESS={shlex.quote(config.temporal_address)}",
        f"export TEMPORAL_NAMESPACE={shlex.quote(config.namespace)}",
        # The plain `temporal` CLI encrypts what it sends, and shows what it reads, through it.
        f"export TEMPORAL_CODEC_ENDPOINT={shlex.quote(config.codec_url)}",
    ]
    if stack.keys is not None and stack.keys.file is not None:
        lines.append(f"export ENCRYPTION_KEYS_FILE={shlex.quote(str(stack.keys.file))}")
    auth = stack.gateway_auth
    if auth is not None:
        lines.append(f"export GATEWAY={shlex.quote(config.gateway_url)}")
        token = auth.shown
        if token is not None:
            lines.append(f"export TOKEN={shlex.quote(token)}")
        else:
            lines.append("# export TOKEN=<one of your GATEWAY_TOKENS>")
    if stack.uses_sandbox:
        lines.append(f"export PERSON={EXAMPLE_PERSON}")
    if call is not None:
        lines.append(f"export CALL={call}")
    return lines


def write_env_file(config: StackConfig, lines: list[str]) -> Path:
    """Write the `export` lines to `<data dir>/demo.env` (mode 0600: it holds the token)."""
    header = (
        "# The local stack's settings for another shell: `source "
        f"{shown(config.env_file)}`.\n# Rewritten by every run of `python -m starter dev`.\n"
    )
    write_private(config.env_file, header + "".join(f"{line}\n" for line in lines))
    return config.env_file


def try_lines(config: StackConfig, stack: Stack, call: str | None) -> list[str]:
    """Commands to try once the `export` lines are pasted."""
    target = '"$CALL"' if call is not None else "<uuid>"
    lines = ["python -m starter list"]
    if call is None and stack.uses_sandbox:
        lines.append('python -m starter start --person "$PERSON" --type verification')
    lines += [
        f"python -m starter status {target}",
        f"python -m starter complete {target} --result-code confirmed",
    ]
    if stack.gateway_auth is not None:
        path = "/calls/$CALL" if call is not None else "/calls"
        lines.append(f'curl -H "Authorization: Bearer $TOKEN" "$GATEWAY{path}"')
    if stack.uses_sandbox:
        token = shlex.quote(shown(config.sandbox_admin_token_file))
        lines.append(
            f'curl -H "Authorization: Bearer $(cat {token})" "{config.sandbox_url}/_sandbox/stats"'
        )
    return lines


def guide(config: StackConfig, stack: Stack, call: str | None = None) -> str:
    """What is running where, what to paste and try, and how to stop."""
    lines = [
        "",
        "The stack is up:",
        f"  Temporal      {config.temporal_address} (namespace {config.namespace})",
        f"  Web UI        {config.ui_url}/namespaces/{config.namespace}/workflows",
        f"  Codec server  {config.codec_url} (the Web UI decrypts payloads through it)",
    ]
    if config.gateway:
        own = stack.gateway_auth is not None and stack.gateway_auth.own
        auth = "bearer token: $TOKEN below" if own else "bearer tokens: GATEWAY_TOKENS"
        lines.append(f"  Gateway       {config.gateway_url}/docs ({auth})")
    if stack.uses_sandbox:
        where = (
            f"TapRaise stand-in; data in {shown(config.sandbox_dir)}; /_sandbox/ routes "
            f"with the token in {shown(config.sandbox_admin_token_file)}"
        )
        lines.append(f"  Sandbox       {config.sandbox_url} ({where})")
    else:
        lines.append("  TapRaise      TAPRAISE_BASE_URL (no sandbox started)")
    lines.append(f"  Metrics       {config.metrics_url} (worker: Temporal's and the calls')")
    if config.gateway:
        lines.append(f"                {config.gateway_metrics_url} (gateway: its requests)")
    lines += [
        "",
        "Processes (logs follow the pointers):",
        stack.describe_children(),
        "",
        *paste_block(config, stack, call),
        "",
        "Ctrl-C stops everything started here; the next run resumes from "
        f"{shown(config.data_dir / 'temporal.sqlite')}.",
    ]
    return "\n".join(lines)


def paste_block(
    config: StackConfig, stack: Stack, call: str | None, lead: str = "In another terminal"
) -> list[str]:
    """The lines to paste into another terminal, then commands to try with them."""
    exports = paste_lines(config, stack, call)
    tries = [f"  {line}" for line in try_lines(config, stack, call)]
    if not exports:
        return [f"{lead}, try:", *tries]
    return [
        f"{lead}, paste (or: source {shown(config.env_file)}):",
        *(f"  {line}" for line in exports),
        "then try:",
        *tries,
    ]


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was starting or the demo was running."""


async def _until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`, cancelling it and raising Interrupted when a stop is requested first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Interrupted
    return task.result()


async def run_stack(
    config: StackConfig,
    *,
    demo: bool = False,
    exit_after_demo: bool = False,
    out: IO[str] = sys.stdout,
) -> int:
    """Start the stack, optionally run the demo, and run until stopped. Returns an exit code."""

    def say(text: str) -> None:
        # A closed console (`| head`) must not keep the stack from stopping its children.
        with contextlib.suppress(OSError, ValueError):
            print(text, file=out, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(config, stop)
    code = 0
    try:
        code = await _serve(stack, say, demo=demo, exit_after_demo=exit_after_demo)
    except Interrupted:
        say("\nInterrupted; stopping ...")
    except ChildError as exc:
        say(f"\nThe stack could not run: {exc}")
        code = 1
    finally:
        # The handlers stay while children stop: a second Ctrl-C must not cut the stopping short.
        await stack.stop()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        if stack.children:
            say("Stopped: " + ", ".join(f"{c.name} (pid {c.pid})" for c in stack.children) + ".")
    return code


async def _serve(stack: Stack, say: Say, *, demo: bool, exit_after_demo: bool) -> int:
    """Start, show the guide, run the demo if asked, then run until stopped."""
    config = stack.config
    say(f"Starting the stack (data in {shown(config.data_dir)}) ...")
    started = time.monotonic()
    await _until_stopped(stack.stop_requested, stack.start())
    interval = DEMO_INTERVAL if demo else DEFAULT_INTERVAL
    _, following = await _until_stopped(
        stack.stop_requested, start_following(stack.client, interval)
    )
    call: str | None = None
    if demo:
        from devstack.demo import hand_call_uuid

        call = str(hand_call_uuid())
    write_env_file(config, paste_lines(config, stack, call))
    say(guide(config, stack, call))
    say(following)
    say(f"\nReady in {time.monotonic() - started:.1f} s.")
    code = 0
    if demo:
        code = await _demo(stack, say, call)
        if exit_after_demo:
            return code
        say("The stack keeps running; Ctrl-C stops it.")
    await stack.watch()
    say("\nStopping ...")
    return code


async def _demo(stack: Stack, say: Say, call: str | None) -> int:
    """Run the demo on the started stack and say how it went; its exit code."""
    from devstack.demo import run_demo
    from devstack.follow_demo import run_follow_demo

    config = stack.config
    say("\nDemo: starting calls and playing agents through them ...")
    try:
        report = await _until_stopped(
            stack.stop_requested, run_demo(stack.client, progress=lambda line: say(f"  {line}"))
        )
    except Interrupted:
        raise
    except Exception as exc:  # the stack stays up for a look at what went wrong
        say(f"\nThe demo failed: {type(exc).__name__}: {exc}")
        return 1
    say("\n" + report.table())
    say("\nFollowing TapRaise: a call requested in its app, then completed there ...")
    try:
        followed = await _until_stopped(
            stack.stop_requested,
            run_follow_demo(
                stack.client,
                config.sandbox_url,
                stack.sandbox_admin_headers(),
                lambda line: say(f"  {line}"),
            ),
        )
    except Interrupted:
        raise
    except Exception as exc:  # the stack stays up for a look at what went wrong
        say(f"\nThe follow demo failed: {type(exc).__name__}: {exc}")
        return 1
    say(f"\nDemo finished: {report.summary()}. Look at them in {config.ui_url}.")
    open_call = report.open_call()
    if open_call is None:
        say(
            "No demo call is open any more: the open ones expire an hour after "
            "they start (`make clean` starts the demo afresh)."
        )
    else:
        if str(open_call) != call:
            call = str(open_call)
            write_env_file(config, paste_lines(config, stack, call))
        lead = "\nTo drive a call by hand, in another terminal"
        say("\n".join(paste_block(config, stack, call, lead)))
    return 0 if report.ok and followed.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m starter dev` and `python -m devstack`."""
    args = build_parser().parse_args(argv)
    # The same settings the children read (environment and `.env`): no TapRaise URL means the
    # stack starts the sandbox and names it to the worker; configured gateway tokens are the
    # gateway's, else the stack makes its own.
    try:
        sandbox = TapRaiseSettings().api_base_url is None
        gateway_settings = GatewaySettings()
        tokens = [entry for entry, _source in gateway_settings.token_entries()]
    except (ValidationError, GatewaySettingsError) as exc:
        print(f"The settings are not valid (environment or .env):\n{exc}", file=sys.stderr)
        return 2
    if args.demo and not sandbox:
        # The demo's persons exist in the sandbox only, and its calls are not for a real TapRaise.
        print("--demo runs against the sandbox only: unset TAPRAISE_BASE_URL", file=sys.stderr)
        return 2
    given = vars(args)
    config = StackConfig(
        sandbox=sandbox,
        gateway_tokens=tokens,
        gateway_tokens_file=gateway_settings.tokens_file,
        data_dir=args.data_dir.absolute(),
        gateway=not args.no_gateway,
        **{name: given[name] for name in _AS_GIVEN},
    )
    # Our own clients (health checks, the demo) read the same configuration as the children.
    use_local_temporal(os.environ, config.temporal_address, config.namespace)
    return asyncio.run(
        run_stack(config, demo=args.demo, exit_after_demo=args.demo and args.exit_after_demo)
    )
