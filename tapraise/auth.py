"""Service account credentials and the self-signed JWTs TapRaise expects.

TapRaise has no token endpoint: the service account signs its own short-lived RS256 JWT with
its private key, and sends it as ``Authorization: Bearer <jwt>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tapraise.errors import ConfigurationError

DEFAULT_TOKEN_LIFETIME = timedelta(minutes=5)
# ``iat`` is set this far before now: a server refuses a token issued in its future, and our
# clock may run a little ahead of TapRaise's. ``exp`` still counts the lifetime from now.
ISSUED_AT_BACKDATE = timedelta(seconds=60)
# Re-sign while the token still has this much validity left, so that a request in flight
# (or a slightly fast server clock) never sees an expired token.
REFRESH_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class ServiceAccount:
    """The credentials TapRaise hands a service account.

    Attributes:
        email: The account email; becomes the ``email`` and ``iss`` claims.
        private_key_id: The key id; becomes the JWT header's ``kid``.
        private_key_pem: The PKCS#8 PEM private key (kept out of ``repr``).
    """

    email: str
    private_key_id: str
    private_key_pem: str = field(repr=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ServiceAccount:
        """Read a JSON file ``{"accountEmail", "privateKeyId", "privateKey"}``.

        Args:
            path: The file to read (the sandbox writes its demo account in this format).

        Returns:
            The service account.

        Raises:
            ConfigurationError: If the file is unreadable, not JSON or lacks a key.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read service account file {path}: {exc.strerror}"
            ) from None
        except ValueError:
            raise ConfigurationError(f"service account file {path} is not valid JSON") from None
        keys = ("accountEmail", "privateKeyId", "privateKey")
        missing = [
            k for k in keys if not isinstance(data, dict) or not isinstance(data.get(k), str)
        ]
        if missing:
            raise ConfigurationError(
                f"service account file {path} lacks {', '.join(missing)} (strings expected)"
            )
        return cls(
            email=data["accountEmail"],
            private_key_id=data["privateKeyId"],
            private_key_pem=data["privateKey"],
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TokenSigner:
    """Signs and caches the RS256 JWT for one service account.

    The token carries header ``kid`` = private key id and claims ``email`` and ``iss`` (both
    the account email), ``iat`` (60 seconds before now, so that a clock running a little ahead
    of TapRaise's does not issue tokens in its future) and ``exp`` (``lifetime`` from now). It
    is reused until less than 60 seconds of validity remain, then signed again.

    Args:
        account: The service account whose key signs the tokens.
        lifetime: Validity of each token from now (TapRaise's sandbox refuses an ``exp - iat``
            of more than one hour).
        clock: Returns the current aware datetime; injectable for tests.

    Raises:
        ConfigurationError: If the private key is not an unencrypted RSA PEM private key.
    """

    def __init__(
        self,
        account: ServiceAccount,
        lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._account = account
        self._lifetime = lifetime
        self._clock = clock
        self._key = _load_private_key(account.private_key_pem)
        self._token: str | None = None
        self._expires_at: datetime | None = None

    @property
    def account(self) -> ServiceAccount:
        """The service account the tokens are signed for."""
        return self._account

    def token(self) -> str:
        """Return a valid token, signing a new one when the cached one is near its expiry."""
        now = self._clock()
        if (
            self._token is None
            or self._expires_at is None
            or now >= self._expires_at - REFRESH_MARGIN
        ):
            self._token, self._expires_at = self._sign(now)
        return self._token

    def invalidate(self) -> None:
        """Forget the cached token so that the next ``token()`` signs a new one."""
        self._token = None
        self._expires_at = None

    def _sign(self, now: datetime) -> tuple[str, datetime]:
        issued_at = int((now - ISSUED_AT_BACKDATE).timestamp())
        expires_at = int((now + self._lifetime).timestamp())
        claims = {
            "email": self._account.email,
            "iss": self._account.email,
            "iat": issued_at,
            "exp": expires_at,
        }
        token = jwt.encode(
            claims, self._key, algorithm="RS256", headers={"kid": self._account.private_key_id}
        )
        return token, datetime.fromtimestamp(expires_at, UTC)

    def __repr__(self) -> str:
        return f"TokenSigner(account={self._account!r}, lifetime={self._lifetime!r})"


def _load_private_key(pem: str) -> RSAPrivateKey:
    # Never echo the PEM or the parser's message (it may quote key material).
    hint = (
        "TAPRAISE_PRIVATE_KEY (or TAPRAISE_PRIVATE_KEY_FILE) must hold the service account's "
        "unencrypted PKCS#8 PEM RSA private key ('-----BEGIN PRIVATE KEY-----' ...)"
    )
    try:
        key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigurationError(f"the private key could not be loaded: {hint}") from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigurationError(f"the private key is not an RSA key (RS256 needs one): {hint}")
    return key
