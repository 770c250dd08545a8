"""`python -m encryption new-key [--id ID]` prints a key line; `serve` runs the codec server."""

from __future__ import annotations

import argparse
import sys

from encryption.keys import KeysError, new_key_line
from encryption.server import main as serve


def main(argv: list[str] | None = None) -> None:
    """Dispatch to `new-key` or `serve`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m encryption",
        description="Payload encryption keys and the codec server (`serve --help`).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new_key = commands.add_parser(
        "new-key",
        help="print a new `<key id>=<base64 key>` line: put it first in the keys file to "
        "make it the writing key, and keep the older lines below it to go on reading",
    )
    new_key.add_argument("--id", help="the key id (default: key-<date>-<random>)")
    commands.add_parser("serve", help="run the codec server")
    args = parser.parse_args(argv)
    try:
        print(new_key_line(args.id))
    except KeysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
