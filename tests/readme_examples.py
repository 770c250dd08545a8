"""The README's shell examples, run as a new user would: in order, in one fresh shell.

Every ```sh block of README.md is an example. A block preceded by a comment
`<!-- example: not run here — <reason> -->` is one the tests cannot run as written (it starts
the whole stack, needs a Docker engine, runs for minutes) and is exercised elsewhere; every
other block runs, top to bottom, in one `bash` with `set -eo pipefail`, so a variable one block
exports is there for the next, and the first command that fails stops the run naming its block.
`curl` fails on an HTTP error status there too (`--fail-with-body`): an example whose request is
refused is broken, even if curl itself would exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

_FENCE = re.compile(r"^```sh\s*\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_NOT_RUN = re.compile(r"<!--\s*example:\s*not run here\s*[—-]+\s*(?P<why>[^>]*?)\s*-->\s*\Z")
_MARK = "::example::"


@dataclass(frozen=True)
class Example:
    """One ```sh block of the README.

    Attributes:
        line: The line of its opening fence.
        code: Its commands.
        not_run: Why the tests do not run it, or None when they do.
    """

    line: int
    code: str
    not_run: str | None


@dataclass(frozen=True)
class Outcome:
    """What running the examples gave."""

    code: int
    output: str
    ran: int
    failed: Example | None


def examples(text: str | None = None) -> list[Example]:
    """Every ```sh block of the README, in order."""
    text = README.read_text() if text is None else text
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip()
        why = _NOT_RUN.search(before)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Example(line, match["body"], why["why"] if why else None))
    return found


def script(blocks: list[Example]) -> str:
    """One bash script that runs `blocks` in order and says which one it is in."""
    parts = [
        "set -eo pipefail",
        'curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }',
    ]
    for index, block in enumerate(blocks):
        parts.append(f"echo '{_MARK}{index}'")
        parts.append(block.code)
    return "\n".join(parts) + "\n"


def run(cwd: Path, env: dict[str, str], timeout: float = 240) -> Outcome:
    """Run the README's examples (those not marked) in `cwd`, a fresh shell with `env`."""
    blocks = [block for block in examples() if block.not_run is None]
    done = subprocess.run(
        ["bash", "-c", script(blocks)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    reached = [int(m) for m in re.findall(rf"^{_MARK}(\d+)$", done.stdout, re.MULTILINE)]
    failed = blocks[reached[-1]] if done.returncode != 0 and reached else None
    return Outcome(done.returncode, output, len(reached), failed)


def fresh_shell_env(home: Path) -> dict[str, str]:
    """The environment of a new terminal: no project variables, no virtualenv on PATH."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:  # an activated virtualenv's bin/ leaves PATH, as in a new terminal
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv)
        )
    env["HOME"] = str(home)
    return env
