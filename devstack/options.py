"""The stack's command-line options, one table for `python -m devstack` and `python -m starter dev`.

`build_parser` turns the table into argparse options; `stack_options` gives a typer command the
same options (each unset unless given), and `stack_argv` turns what was given back into the
arguments `build_parser` reads.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import typer

DEFAULT_DATA_DIR: Final = Path(".data")
DEFAULT_TEMPORAL_PORT: Final = 7233
DEFAULT_UI_PORT: Final = 8233
DEFAULT_SANDBOX_PORT: Final = 8081
DEFAULT_GATEWAY_PORT: Final = 8080
DEFAULT_CODEC_PORT: Final = 8082
DEFAULT_METRICS_PORT: Final = 9464
DEFAULT_GATEWAY_METRICS_PORT: Final = 9465
DEFAULT_NAMESPACE: Final = "default"
# The dev server creates its SQLite schema on first start, which takes a few seconds on a slow
# disk; the Python processes are up in one or two.
STARTUP_TIMEOUT_SECONDS: Final = 60.0

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Option:
    """One option: its flags, what it does (lower case, no full stop), and its default.

    A default of False makes it a flag that takes no value.
    """

    flags: tuple[str, ...]
    help: str
    default: Any = False
    # The value's name in the CLI's help (argparse names it after the option).
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flags[0].removeprefix("--").replace("-", "_")

    @property
    def takes_value(self) -> bool:
        return self.default is not False

    @property
    def kind(self) -> type:
        return Path if isinstance(self.default, Path) else type(self.default)

    @property
    def shown_default(self) -> str:
        default = self.default
        return f"{default:g}" if isinstance(default, float) else str(default)


OPTIONS: Final = (
    Option(
        ("--data-dir",),
        "where the server's SQLite file, the sandbox store and the logs live",
        DEFAULT_DATA_DIR,
        "DIR",
    ),
    Option(("--temporal-port",), "Temporal's gRPC port", DEFAULT_TEMPORAL_PORT),
    Option(("--ui-port",), "the Web UI's port", DEFAULT_UI_PORT),
    Option(("--sandbox-port",), "the TapRaise sandbox's port", DEFAULT_SANDBOX_PORT),
    Option(("--gateway-port",), "the HTTP gateway's port", DEFAULT_GATEWAY_PORT),
    Option(
        ("--codec-port",),
        "the codec server's port (the Web UI decrypts payloads through it)",
        DEFAULT_CODEC_PORT,
    ),
    Option(
        ("--metrics-port",),
        "the worker's metrics port (Prometheus, /metrics on 127.0.0.1)",
        DEFAULT_METRICS_PORT,
    ),
    Option(
        ("--gateway-metrics-port",),
        "the gateway's metrics port (Prometheus, /metrics on 127.0.0.1)",
        DEFAULT_GATEWAY_METRICS_PORT,
    ),
    Option(("--namespace",), "the Temporal namespace", DEFAULT_NAMESPACE),
    Option(("--no-gateway",), "do not start the HTTP gateway"),
    Option(
        ("--follow", "-f"),
        "also show every process's output here, each line prefixed with its name",
    ),
    Option(
        ("--demo",),
        "once healthy, start demo calls and play agents through them (sandbox only)",
    ),
    Option(("--exit-after-demo",), "with --demo: stop the stack when the demo is done (CI)"),
    Option(
        ("--startup-timeout",),
        "seconds each process may take to become healthy",
        STARTUP_TIMEOUT_SECONDS,
        "SECONDS",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The options of `starter dev` (shared with the CLI)."""
    parser = argparse.ArgumentParser(
        prog="python -m starter dev",
        description="Run the whole stack on this machine: Temporal dev server (with its Web UI), "
        "the TapRaise sandbox, the worker and the HTTP gateway. Ctrl-C stops it.",
        epilog="Example: python -m starter dev --demo   (make demo runs exactly this)",
    )
    for option in OPTIONS:
        if not option.takes_value:
            parser.add_argument(*option.flags, action="store_true", help=option.help)
            continue
        help_text = f"{option.help} (default: {option.shown_default})"
        parser.add_argument(
            *option.flags,
            type=option.kind,
            default=option.default,
            help=help_text,
        )
    return parser


def _typer_parameter(option: Option) -> inspect.Parameter:
    text = option.help[0].upper() + option.help[1:]
    if option.takes_value:
        text += f" (default {option.shown_default})"
        default = typer.Option(None, *option.flags, help=f"{text}.", metavar=option.metavar)
        kind: Any = option.kind | None
    else:
        default, kind = typer.Option(False, *option.flags, help=f"{text}."), bool
    return inspect.Parameter(
        option.dest, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
    )


def stack_options(command: F) -> F:
    """Give a typer command taking `**options` the stack's options (typer reads the signature)."""
    parameters = [_typer_parameter(option) for option in OPTIONS]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return command


def stack_argv(given: Mapping[str, Any]) -> list[str]:
    """The arguments for `build_parser` of the options a `stack_options` command was given."""
    argv: list[str] = []
    for option in OPTIONS:
        value = given.get(option.dest)
        if option.takes_value and value is not None:
            argv += [option.flags[0], str(value)]
        elif not option.takes_value and value:
            argv.append(option.flags[0])
    return argv
