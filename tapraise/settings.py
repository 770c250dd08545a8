"""TapRaise connection settings from environment variables (and a ``.env`` file).

``TAPRAISE_BASE_URL`` names the TapRaise to talk to, always: a real one or a stand-in, never
assumed. It must be ``https`` unless its host is a loopback address, or unless
``TAPRAISE_ALLOW_HTTP=true`` says that plain HTTP is meant (a stand-in on a private network).
The three credentials are required with it and checked up front; for a sandbox,
``TAPRAISE_SANDBOX_DATA_DIR`` may name its data directory instead, whose demo account is used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import httpx
from pydantic import Field, HttpUrl, PositiveFloat, PositiveInt, SecretStr, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tapraise.auth import ServiceAccount
from tapraise.client import DEFAULT_MAX_CONNECTIONS, RequestObserver, TapRaiseClient
from tapraise.errors import ConfigurationError

SANDBOX_ACCOUNT_FILE = "service-account.json"
LOOPBACK_NAMES = frozenset({"localhost"})
MISSING_BASE_URL = (
    "TAPRAISE_BASE_URL is not set: set it to your TapRaise API (https://...) together with "
    "TAPRAISE_ACCOUNT_EMAIL, TAPRAISE_PRIVATE_KEY_ID and TAPRAISE_PRIVATE_KEY (or "
    "TAPRAISE_PRIVATE_KEY_FILE), or to a running sandbox (e.g. http://127.0.0.1:8081 with "
    "TAPRAISE_SANDBOX_DATA_DIR=.data/sandbox). `make run` starts a sandbox and names it to "
    "the worker it starts."
)

# Values copied from an example file and never filled in; failing on them beats a 401 later.
_PLACEHOLDERS = {
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "replaceme",
    "replace-me",
    "todo",
    "xxx",
    "placeholder",
    "secret",
}


class TapRaiseSettings(BaseSettings):
    """Where TapRaise is and how to authenticate.

    Attributes:
        api_base_url: ``TAPRAISE_BASE_URL``; required to make a client (no default TapRaise).
        allow_http: ``TAPRAISE_ALLOW_HTTP``, accept a plain ``http`` URL on a host that is not
            a loopback address (a stand-in on a private network); false by default.
        account_email: ``TAPRAISE_ACCOUNT_EMAIL``.
        private_key_id: ``TAPRAISE_PRIVATE_KEY_ID``.
        private_key: ``TAPRAISE_PRIVATE_KEY``, the PEM text.
        private_key_file: ``TAPRAISE_PRIVATE_KEY_FILE``, a file holding the PEM instead.
        sandbox_data_dir: ``TAPRAISE_SANDBOX_DATA_DIR``, a sandbox's data directory: with no
            credentials set, its demo account file supplies them.
        timeout_seconds: ``TAPRAISE_TIMEOUT_SECONDS``, one limit for every request phase;
            unset keeps the client's per-phase defaults.
        max_connections: ``TAPRAISE_MAX_CONNECTIONS``, connections kept open to TapRaise.
    """

    model_config = SettingsConfigDict(
        env_prefix="TAPRAISE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,  # "TAPRAISE_BASE_URL=" in a .env means unset
        validate_by_name=True,
    )

    # Named apart from the ``base_url()`` method, which refuses to go on without it. Optional
    # here so that the dev stack can read whether one is configured.
    api_base_url: HttpUrl | None = Field(default=None, validation_alias="TAPRAISE_BASE_URL")
    allow_http: bool = False
    account_email: str | None = None
    private_key_id: str | None = None
    private_key: SecretStr | None = None
    private_key_file: Path | None = None
    sandbox_data_dir: Path | None = None
    timeout_seconds: PositiveFloat | None = None
    max_connections: PositiveInt = DEFAULT_MAX_CONNECTIONS

    @model_validator(mode="after")
    def _https_unless_loopback(self) -> Self:
        # Tokens and donor data must not cross a network in the clear by accident.
        url = self.api_base_url
        if url is not None and url.scheme == "http" and not self.allow_http:
            if not is_loopback(url.host or ""):
                raise PydanticCustomError(
                    "insecure_url",
                    "TAPRAISE_BASE_URL must use https unless its host is a loopback address "
                    "(127.0.0.0/8, ::1, localhost); {host} is not. For a stand-in on a private "
                    "network, set TAPRAISE_ALLOW_HTTP=true.",
                    {"host": url.host},
                )
        return self

    def base_url(self) -> str:
        """The TapRaise root URL.

        Raises:
            ConfigurationError: When ``TAPRAISE_BASE_URL`` is not set, saying what to set.
        """
        if self.api_base_url is None:
            raise ConfigurationError(MISSING_BASE_URL)
        return str(self.api_base_url).rstrip("/")

    def timeout(self) -> httpx.Timeout | None:
        """The request timeout, or ``None`` for the client's per-phase defaults."""
        return None if self.timeout_seconds is None else httpx.Timeout(self.timeout_seconds)

    def service_account(self) -> ServiceAccount:
        """Resolve the service account credentials.

        Raises:
            ConfigurationError: When a credential is missing, a placeholder, or unreadable,
                or when the sandbox named by ``TAPRAISE_SANDBOX_DATA_DIR`` has not written its
                demo account yet.
        """
        given = (self.account_email, self.private_key_id, self.private_key, self.private_key_file)
        if self.sandbox_data_dir is not None and not any(given):
            return self._sandbox_account(self.sandbox_data_dir)
        missing = [
            name
            for name, value in (
                ("TAPRAISE_ACCOUNT_EMAIL", self.account_email),
                ("TAPRAISE_PRIVATE_KEY_ID", self.private_key_id),
            )
            if not value
        ]
        if self.private_key is None and self.private_key_file is None:
            missing.append("TAPRAISE_PRIVATE_KEY (or TAPRAISE_PRIVATE_KEY_FILE)")
        if missing:
            raise ConfigurationError(
                f"TapRaise needs these too: {', '.join(missing)} (for a sandbox, "
                "TAPRAISE_SANDBOX_DATA_DIR may name its data directory instead)"
            )
        if self.private_key is not None and self.private_key_file is not None:
            raise ConfigurationError(
                "set only one of TAPRAISE_PRIVATE_KEY and TAPRAISE_PRIVATE_KEY_FILE"
            )
        assert self.account_email is not None and self.private_key_id is not None
        email = _reject_placeholder("TAPRAISE_ACCOUNT_EMAIL", self.account_email)
        key_id = _reject_placeholder("TAPRAISE_PRIVATE_KEY_ID", self.private_key_id)
        return ServiceAccount(email=email, private_key_id=key_id, private_key_pem=self._pem())

    def make_client(self, observers: Sequence[RequestObserver] = ()) -> TapRaiseClient:
        """Build a ``TapRaiseClient`` for these settings.

        Args:
            observers: Told of every request the client sends (metrics, tracing).

        Raises:
            ConfigurationError: When the credentials or the private key are not usable.
        """
        return TapRaiseClient(
            self.base_url(),
            self.service_account(),
            timeout=self.timeout(),
            max_connections=self.max_connections,
            observers=observers,
        )

    def _pem(self) -> str:
        if self.private_key is not None:
            pem = self.private_key.get_secret_value()
            # A PEM pasted into a one-line .env value often carries literal "\n" escapes.
            if "\n" not in pem.strip() and "\\n" in pem:
                pem = pem.replace("\\n", "\n")
            return _reject_placeholder("TAPRAISE_PRIVATE_KEY", pem)
        assert self.private_key_file is not None
        try:
            pem = self.private_key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"TAPRAISE_PRIVATE_KEY_FILE {self.private_key_file} cannot be read: {exc.strerror}"
            ) from None
        return _reject_placeholder("TAPRAISE_PRIVATE_KEY_FILE", pem)

    def _sandbox_account(self, data_dir: Path) -> ServiceAccount:
        path = (data_dir / SANDBOX_ACCOUNT_FILE).absolute()
        if not path.is_file():
            raise ConfigurationError(
                f"TAPRAISE_SANDBOX_DATA_DIR names a sandbox whose demo account file {path} "
                "does not exist yet. Start the sandbox first (python -m sandbox --data-dir "
                f"{data_dir}), or set TAPRAISE_ACCOUNT_EMAIL, TAPRAISE_PRIVATE_KEY_ID and "
                "TAPRAISE_PRIVATE_KEY (or TAPRAISE_PRIVATE_KEY_FILE)."
            )
        return ServiceAccount.from_file(path)


def make_client(settings: TapRaiseSettings | None = None) -> TapRaiseClient:
    """Build a ``TapRaiseClient`` from settings (read from the environment when omitted).

    Raises:
        ConfigurationError: When the settings or the private key are not usable.
    """
    return (settings or TapRaiseSettings()).make_client()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an IPv4 address or a bracketed IPv6 one) is this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _reject_placeholder(name: str, value: str) -> str:
    stripped = value.strip()
    lowered = stripped.lower()
    if (
        not stripped
        or lowered in _PLACEHOLDERS
        or lowered.startswith(("your-", "your_", "<"))
        or lowered.endswith(">")
    ):
        # The value itself is never echoed: it may be a secret.
        raise ConfigurationError(f"{name} looks like a placeholder; set the real value")
    return stripped
