"""Running the embedded stack: `python -m devstack` or `python -m starter dev` (`make run`).

The stack starts, prints where everything is, optionally runs the demo, and runs until Ctrl-C
or SIGTERM, which stop the processes it started (and nothing else). State lives under the data
directory (default `.data/`): the dev server's SQLite file, the sandbox's store and the
gateway's token. A second run resumes where the first stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any, Final, TypeVar

from pydantic import ValidationError

from devstack.guide import guide, paste_block, paste_lines, write_env_file
from devstack.options import build_parser
from devstack.process import ChildError, shown
from devstack.stack import Stack, StackConfig, use_local_temporal
from gateway.settings import GatewaySettings
from tapraise.settings import TapRaiseSettings

T = TypeVar("T")
Say = Callable[[str], None]

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
# The options that are StackConfig fields of the same name and value.
_AS_GIVEN: Final = (
    "temporal_port", "ui_port", "sandbox_port", "gateway_port", "namespace", "follow",
    "startup_timeout",
)  # fmt: skip


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
    call: str | None = None
    if demo:
        from devstack.demo import hand_call_uuid

        call = str(hand_call_uuid())
    write_env_file(config, paste_lines(config, stack, call))
    say(guide(config, stack, call))
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

    assert stack.client is not None
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
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m starter dev` and `python -m devstack`."""
    args = build_parser().parse_args(argv)
    # The same settings the children read (environment and `.env`): no TapRaise URL means the
    # sandbox; configured gateway tokens are the gateway's, else the stack makes its own.
    try:
        sandbox = TapRaiseSettings().uses_sandbox
        tokens = GatewaySettings().tokens
    except ValidationError as exc:
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
        data_dir=args.data_dir.absolute(),
        gateway=not args.no_gateway,
        **{name: given[name] for name in _AS_GIVEN},
    )
    # Our own clients (health checks, the demo) read the same configuration as the children.
    use_local_temporal(os.environ, config.temporal_address, config.namespace)
    return asyncio.run(
        run_stack(config, demo=args.demo, exit_after_demo=args.demo and args.exit_after_demo)
    )
