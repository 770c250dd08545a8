"""Payload encryption keys: which key writes, which keys read, and where they come from.

Keys are lines of `<key id>=<base64 of 32 random bytes>`. The first line is the key that writes;
every line can read. To rotate: put a new key on the first line and keep the old ones below it
for as long as histories written with them must be read (a workflow's history lives as long as
the namespace keeps it).

Where they come from, the first that is set:
1. `ENCRYPTION_KEYS`: the lines themselves (newlines or commas between keys);
2. `ENCRYPTION_KEYS_FILE`: a file holding them (a Docker secret, say);
3. `.data/encryption-keys` in the working directory: the key the embedded stack writes for
   itself (`make run`), so that a shell in the clone reads what the demo wrote.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

KEY_BYTES: Final = 32
"""AES-256."""
KEYS_VARIABLE: Final = "ENCRYPTION_KEYS"
KEYS_FILE_VARIABLE: Final = "ENCRYPTION_KEYS_FILE"
DEMO_KEYS_FILE: Final = Path(".data") / "encryption-keys"
"""Where the embedded stack keeps its key, relative to the clone."""

_KEY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeysError(ValueError):
    """The keys cannot be used as given; the message says what to set and never shows a key."""


@dataclass(frozen=True)
class KeyRing:
    """The keys a process holds.

    Attributes:
        writer: The id of the key that encrypts what this process writes.
        keys: Every key that can decrypt, by id (the writer's included).
        source: Where the keys came from (a variable's or a file's name), for messages.
    """

    writer: str
    keys: Mapping[str, bytes]
    source: str

    @classmethod
    def parse(cls, text: str, source: str) -> KeyRing:
        """Keys from `<id>=<base64>` entries, one per line or separated by commas.

        Blank lines and lines starting with `#` are skipped.

        Raises:
            KeysError: no key, a malformed entry, a key that is not 32 bytes, or an id twice.
        """
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for line in text.splitlines() for entry in line.split(",")]
        for number, entry in enumerate(entries, start=1):
            if not entry or entry.startswith("#"):
                continue
            key_id, equals, encoded = entry.partition("=")
            key_id = key_id.strip()
            if not equals or not _KEY_ID.fullmatch(key_id):
                raise KeysError(
                    f"{source}: entry {number} is not `<key id>=<base64 key>` (a key id is "
                    "letters, digits, '.', '_' or '-', at most 64)"
                )
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error:
                raise KeysError(f"{source}: key {key_id!r} is not base64") from None
            if len(key) != KEY_BYTES:
                raise KeysError(
                    f"{source}: key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
                    "(`python -m encryption new-key` makes one)"
                )
            if key_id in keys:
                raise KeysError(f"{source}: key id {key_id!r} appears twice")
            keys[key_id] = key
        if not keys:
            raise KeysError(f"{source} holds no key (`python -m encryption new-key` makes one)")
        return cls(writer=next(iter(keys)), keys=keys, source=source)

    @classmethod
    def from_file(cls, path: Path, source: str | None = None) -> KeyRing:
        """Keys from a file.

        Raises:
            KeysError: the file cannot be read, or holds no usable keys.
        """
        source = source or str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysError(f"cannot read the encryption keys in {source}: {exc}") from None
        return cls.parse(text, source)


def load_keys(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> KeyRing | None:
    """The process's keys, from the environment or the embedded stack's file.

    Returns:
        The keys, or None when none are configured anywhere.

    Raises:
        KeysError: keys are configured but unusable, or both variables are set.
    """
    environ = os.environ if environ is None else environ
    inline = environ.get(KEYS_VARIABLE, "").strip()
    file = environ.get(KEYS_FILE_VARIABLE, "").strip()
    if inline and file:
        raise KeysError(f"set {KEYS_VARIABLE} or {KEYS_FILE_VARIABLE}, not both")
    if inline:
        return KeyRing.parse(inline, KEYS_VARIABLE)
    if file:
        return KeyRing.from_file(Path(file), f"{KEYS_FILE_VARIABLE} ({file})")
    demo = (cwd or Path.cwd()) / DEMO_KEYS_FILE
    if demo.is_file():
        return KeyRing.from_file(demo)
    return None


def require_keys(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> KeyRing:
    """The process's keys; refuses to go on without them.

    Raises:
        KeysError: none configured (the message says how to make and set one), or unusable.
    """
    keys = load_keys(environ, cwd)
    if keys is None:
        raise KeysError(
            "no payload encryption key: set ENCRYPTION_KEYS_FILE to a file of "
            "`<key id>=<base64 key>` lines (or ENCRYPTION_KEYS to the lines themselves). "
            "`python -m encryption new-key` prints a new key; every process of one namespace "
            "(worker, CLI, gateway, codec server) needs the same keys"
        )
    return keys


def new_key_line(key_id: str | None = None) -> str:
    """A new key as a `<key id>=<base64>` line (the id defaults to today's date)."""
    key_id = key_id or f"key-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(2)}"
    if not _KEY_ID.fullmatch(key_id):
        raise KeysError(f"key id {key_id!r}: letters, digits, '.', '_' or '-', at most 64")
    return f"{key_id}={base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def ensure_demo_keys(path: Path) -> KeyRing:
    """The embedded stack's key file: read it, or write a new one readable by its owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write("# Payload encryption keys of the embedded stack (first line writes).\n")
            file.write(new_key_line("demo-" + secrets.token_hex(4)) + "\n")
    # An older clone may have written it with a looser mode.
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return KeyRing.from_file(path)
