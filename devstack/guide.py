"""What the stack prints once it is up: where everything runs, and lines for another terminal.

The `export` lines (`TOKEN`, `PERSON`, with the demo `CALL`) are also written to
`<data dir>/demo.env`, for `source`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Final

from devstack.process import shown, write_private
from devstack.stack import Stack, StackConfig
from sandbox.seed import DEMO_PERSON_UUIDS

# The person the pasted `PERSON` names: the first of the sandbox's demo persons.
EXAMPLE_PERSON: Final = DEMO_PERSON_UUIDS[0]


def paste_lines(config: StackConfig, stack: Stack, call: str | None = None) -> list[str]:
    """The `export` lines that set up another terminal for this stack.

    `TEMPORAL_ADDRESS`/`TEMPORAL_NAMESPACE` point the CLI and the plain `temporal` CLI at this
    stack, `GATEWAY` is the gateway's URL, `TOKEN` its token when it is the stack's own (a
    configured one is named, never shown), `PERSON` a demo person of the sandbox, `CALL` the
    call to drive by hand (if any).
    """
    lines = [
        f"export TEMPORAL_ADDRESS={shlex.quote(config.temporal_address)}",
        f"export TEMPORAL_NAMESPACE={shlex.quote(config.namespace)}",
    ]
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
    return lines


def guide(config: StackConfig, stack: Stack, call: str | None = None) -> str:
    """What is running where, what to paste and try, and how to stop."""
    lines = [
        "",
        "The stack is up:",
        f"  Temporal      {config.temporal_address} (namespace {config.namespace})",
        f"  Web UI        {config.ui_url}/namespaces/{config.namespace}/workflows",
    ]
    if config.gateway:
        own = stack.gateway_auth is not None and stack.gateway_auth.own
        auth = "bearer token: $TOKEN below" if own else "bearer tokens: GATEWAY_TOKENS"
        lines.append(f"  Gateway       {config.gateway_url}/docs ({auth})")
    if stack.uses_sandbox:
        where = f"TapRaise stand-in; data in {shown(config.sandbox_dir)}"
        lines.append(f"  Sandbox       {config.sandbox_url} ({where})")
    else:
        lines.append("  TapRaise      TAPRAISE_BASE_URL (no sandbox started)")
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
