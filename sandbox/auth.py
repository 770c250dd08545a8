"""Service-account keys and the Bearer-token check TapRaise performs.

TapRaise has no token endpoint: the client signs a short-lived RS256 JWT with its private key and
names the key in the ``kid`` header. The sandbox keeps only the public half.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.store import Account, account_by_key_id
from sandbox.validation import ApiError

MAX_TOKEN_LIFETIME_SECONDS = 3600
"""Tokens whose ``exp - iat`` exceeds this are refused."""

TOKEN_LEEWAY_SECONDS = 30
"""Tolerance for ``exp`` against the sandbox clock."""

ISSUED_AT_LEEWAY_SECONDS = 10
"""How far in the sandbox's future a token's ``iat`` may lie: little, as a strict server allows.

A client whose clock runs ahead backdates ``iat`` to stay within it."""


@dataclass(frozen=True)
class KeyPair:
    """A generated service-account key."""

    key_id: str
    private_key_pem: str
    public_key_pem: str


def generate_key_pair() -> KeyPair:
    """Create an RSA-2048 key with a random key id (private half as PKCS#8 PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return KeyPair(
        key_id=secrets.token_hex(20),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        public_key_pem=public_pem_of(key),
    )


def public_pem_of(key: rsa.RSAPrivateKey) -> str:
    """Return the SubjectPublicKeyInfo PEM of a private key."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def credentials(email: str, pair: KeyPair) -> dict[str, str]:
    """Return the credentials TapRaise hands to a service account."""
    return {"accountEmail": email, "privateKeyId": pair.key_id, "privateKey": pair.private_key_pem}


def load_or_create_credentials(path: Path, email: str) -> KeyPair:
    """Reuse the key in ``path`` if it is there, else generate one and write it (mode 0600)."""
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("accountEmail") == email:
            key = serialization.load_pem_private_key(data["privateKey"].encode(), password=None)
            if isinstance(key, rsa.RSAPrivateKey):
                return KeyPair(data["privateKeyId"], data["privateKey"], public_pem_of(key))
    pair = generate_key_pair()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(credentials(email, pair), handle, indent=2)
        handle.write("\n")
    path.chmod(0o600)
    return pair


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


def withdrawn() -> ApiError:
    """The 401 every request gets while the credentials are withdrawn (a credential outage)."""
    return _unauthorized("Service account credentials have been withdrawn")


# Clients reuse a token for many requests: its signature is checked once, its expiry every time.
_VERIFIED_TOKENS = 4096
_verified: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
_verified_lock = threading.Lock()  # endpoints run in a thread pool


@functools.lru_cache(maxsize=256)
def _public_key(pem: str) -> Any:
    return serialization.load_pem_public_key(pem.encode())


def _verified_claims(token: str, pem: str) -> dict[str, Any]:
    """The token's claims once its RS256 signature and required claims check out.

    Raises:
        jwt.PyJWTError: as ``jwt.decode`` does; ``ExpiredSignatureError`` also for a token
            that was accepted before and has expired since.
    """
    key = (token, pem)
    with _verified_lock:
        claims = _verified.get(key)
    if claims is None:
        claims = jwt.decode(
            token,
            _public_key(pem),
            algorithms=["RS256"],
            # ``iat`` is judged in ``authenticate`` against its own, smaller leeway.
            options={"require": ["exp", "iat", "iss", "email"], "verify_iat": False},
            leeway=TOKEN_LEEWAY_SECONDS,
        )
        with _verified_lock:
            _verified[key] = claims
            if len(_verified) > _VERIFIED_TOKENS:
                _verified.popitem(last=False)
    elif claims["exp"] <= time.time() - TOKEN_LEEWAY_SECONDS:  # as jwt.decode judges it
        with _verified_lock:
            _verified.pop(key, None)
        raise jwt.ExpiredSignatureError("Signature has expired")
    return claims


def authenticate(conn: sqlite3.Connection, authorization: str | None) -> Account:
    """Check a Bearer token and return the service account it proves.

    Raises:
        ApiError: 401 naming what is wrong with the token.
    """
    if not authorization:
        raise _unauthorized("Missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Authorization header must be 'Bearer <jwt>'")
    token = token.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _unauthorized("Malformed token") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _unauthorized("Token header has no kid")
    account = account_by_key_id(conn, kid)
    if account is None:
        raise _unauthorized("Unknown key id")
    try:
        claims = _verified_claims(token, account.public_key_pem)
    except jwt.ExpiredSignatureError:
        raise _unauthorized("Token has expired") from None
    except jwt.InvalidSignatureError:
        raise _unauthorized("Token signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise _unauthorized(f"Invalid token: {exc}") from None
    issued_at = claims["iat"]
    if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
        raise _unauthorized("Token iat must be a number (seconds since the epoch)")
    ahead = issued_at - time.time()
    if ahead > ISSUED_AT_LEEWAY_SECONDS:
        raise _unauthorized(
            f"Token is issued in the future: its iat is {ahead:.0f} s ahead of the server's "
            f"clock (at most {ISSUED_AT_LEEWAY_SECONDS} s allowed); check the client's clock"
        )
    if claims["exp"] - issued_at > MAX_TOKEN_LIFETIME_SECONDS:
        raise _unauthorized(f"Token lifetime exceeds {MAX_TOKEN_LIFETIME_SECONDS} seconds")
    if claims["iss"] != claims["email"]:
        raise _unauthorized("Token iss must equal email")
    if claims["email"] != account.email:
        raise _unauthorized("Token email does not belong to this key")
    return account


def authorize(account: Account, action: str) -> None:
    """Refuse (403) an action the account is not allowed to take."""
    if action not in account.actions:
        raise ApiError(403, f"Service account {account.email} may not perform '{action}'")
