"""Bearer tokens and what each may do.

A token carries scopes: `start` (start calls), `act` (report an agent's actions on a call) and
`read` (look calls up and list them). The agents' tools get `act` alone, so that a token kept on
many desktops can neither start calls nor list the donors being called.

One entry per token, in `GATEWAY_TOKENS` (comma-separated) or `GATEWAY_TOKENS_FILE` (one a line):

    <token>                 every scope
    <token>:act             one scope
    <token>:act+read        several, joined by `+`

A colon never occurs in a bearer token (RFC 6750 allows letters, digits and `-._~+/=`), so it
cannot be mistaken for part of one — unlike `=`, which ends padded base64.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydantic import SecretStr


class Scope(StrEnum):
    """What a token may do."""

    START = "start"
    ACT = "act"
    READ = "read"


ALL_SCOPES: Final = frozenset(Scope)
SCOPE_SEPARATOR: Final = ":"
SCOPE_JOINER: Final = "+"
# RFC 6750's b64token: what an `Authorization: Bearer` header can carry.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class TokenSyntaxError(ValueError):
    """An entry is not `<token>[:scope+scope]`; the message names the entry by its position and
    never repeats any of it (a token is a secret)."""


@dataclass(frozen=True)
class Grant:
    """One accepted token and its scopes.

    Attributes:
        secret: The token.
        scopes: What it may do.
        number: Its position among the configured tokens (1-based): how logs and limits name it
            without showing it.
    """

    secret: SecretStr
    scopes: frozenset[Scope]
    number: int

    @property
    def label(self) -> str:
        return f"token #{self.number}"


def parse_entry(entry: str, number: int, source: str) -> Grant:
    """One entry, `<token>` or `<token>:<scope>+<scope>`.

    Args:
        entry: The entry, surrounding spaces already dropped.
        number: Its position (1-based), to name it in a refusal.
        source: The setting it came from (`GATEWAY_TOKENS`, or `GATEWAY_TOKENS_FILE line 3`).

    Raises:
        TokenSyntaxError: naming `source` and what is wrong, never the entry's text.
    """
    token, colon, scope_text = entry.partition(SCOPE_SEPARATOR)
    where = f"{source}: entry {number}"
    if not _B64TOKEN.fullmatch(token):
        raise TokenSyntaxError(
            f"{where}: a token may hold only letters, digits and -._~+/ (then = padding); "
            f"write <token> or <token>{SCOPE_SEPARATOR}act+read"
        )
    if not colon:
        return Grant(SecretStr(token), ALL_SCOPES, number)
    names = scope_text.split(SCOPE_JOINER)
    known = [scope.value for scope in Scope]
    if not all(name in known for name in names):
        # The scope text is not repeated either: a mistyped entry may hold a secret there.
        raise TokenSyntaxError(
            f"{where}: unknown or empty scope after '{SCOPE_SEPARATOR}'; scopes are "
            f"{', '.join(known)}, joined by '{SCOPE_JOINER}' "
            f"(e.g. <token>{SCOPE_SEPARATOR}act+read)"
        )
    return Grant(SecretStr(token), frozenset(Scope(name) for name in names), number)


def parse_entries(entries: Iterable[tuple[str, str]]) -> tuple[Grant, ...]:
    """Every entry, each with the setting (and line) it came from.

    Raises:
        TokenSyntaxError: for a malformed entry, or a token given twice (which of its two scope
            lists would hold?).
    """
    grants: list[Grant] = []
    seen: dict[str, int] = {}
    for number, (entry, source) in enumerate(entries, start=1):
        grant = parse_entry(entry, number, source)
        secret = grant.secret.get_secret_value()
        if secret in seen:
            raise TokenSyntaxError(
                f"{source}: entry {number} repeats the token of entry {seen[secret]}"
            )
        seen[secret] = number
        grants.append(grant)
    return tuple(grants)


class Tokens:
    """The configured tokens, matched in constant time."""

    def __init__(self, grants: Iterable[Grant]) -> None:
        self.grants = tuple(grants)
        self._secrets = tuple(
            (grant.secret.get_secret_value().encode(), grant) for grant in self.grants
        )

    def __bool__(self) -> bool:
        return bool(self.grants)

    def match(self, given: bytes) -> Grant | None:
        """The grant of the token `given`, or None."""
        found: Grant | None = None
        for secret, grant in self._secrets:
            # Compared against every token, in constant time each: no early exit to time.
            if hmac.compare_digest(given, secret):
                found = grant
        return found


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token
