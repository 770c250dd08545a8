"""TapRaise connection settings from environment variables (and a ``.env`` file).

Without ``TAPRAISE_BASE_URL`` the embedded sandbox is used, with the demo service account it
writes on first start. With it, the three credentials are required and checked up front.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic import Field, HttpUrl, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tapraise.auth import ServiceAccount
from tapraise.client import DEFAULT_MAX_CONNECTIONS, TapRaiseClient
from tapraise.errors import ConfigurationError

SANDBOX_BASE_URL = "http://127.0.0.1:8081"
SANDBOX_ACCOUNT_FILE = "service-account.json"

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
        api_base_url: ``TAPRAISE_BASE_URL``; unset means the embedded sandbox.
        account_email: ``TAPRAISE_ACCOUNT_EMAIL``.
        private_key_id: ``TAPRAISE_PRIVATE_KEY_ID``.
        private_key: ``TAPRAISE_PRIVATE_KEY``, the PEM text.
        private_key_file: ``TAPRAISE_PRIVATE_KEY_FILE``, a file holding the PEM instead.
        sandbox_data_dir: ``TAPRAISE_SANDBOX_DATA_DIR``, where the sandbox keeps its data and
            its demo account file.
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

    # Named apart from the ``base_url()`` method, which also covers the sandbox default.
    api_base_url: HttpUrl | None = Field(default=None, validation_alias="TAPRAISE_BASE_URL")
    account_email: str | None = None
    private_key_id: str | None = None
    private_key: SecretStr | None = None
    private_key_file: Path | None = None
    sandbox_data_dir: Path = Path(".data/sandbox")
    timeout_seconds: PositiveFloat | None = None
    max_connections: PositiveInt = DEFAULT_MAX_CONNECTIONS

    @property
    def uses_sandbox(self) -> bool:
        """Whether no TapRaise URL is configured, so the embedded sandbox is used."""
        return self.api_base_url is None

    def base_url(self) -> str:
        """The TapRaise root URL: the configured one, or the embedded sandbox's."""
        if self.api_base_url is None:
            return SANDBOX_BASE_URL
        return str(self.api_base_url).rstrip("/")

    def timeout(self) -> httpx.Timeout | None:
        """The request timeout, or ``None`` for the client's per-phase defaults."""
        return None if self.timeout_seconds is None else httpx.Timeout(self.timeout_seconds)

    def service_account(self) -> ServiceAccount:
        """Resolve the service account credentials.

        Raises:
            ConfigurationError: When a credential is missing, a placeholder, or unreadable,
                or when the sandbox has not written its demo account yet.
        """
        if self.api_base_url is None:
            return self._sandbox_account()
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
                f"TAPRAISE_BASE_URL is set, so these are required too: {', '.join(missing)}"
            )
        if self.private_key is not None and self.private_key_file is not None:
            raise ConfigurationError(
                "set only one of TAPRAISE_PRIVATE_KEY and TAPRAISE_PRIVATE_KEY_FILE"
            )
        assert self.account_email is not None and self.private_key_id is not None
        email = _reject_placeholder("TAPRAISE_ACCOUNT_EMAIL", self.account_email)
        key_id = _reject_placeholder("TAPRAISE_PRIVATE_KEY_ID", self.private_key_id)
        return ServiceAccount(email=email, private_key_id=key_id, private_key_pem=self._pem())

    def make_client(self) -> TapRaiseClient:
        """Build a ``TapRaiseClient`` for these settings.

        Raises:
            ConfigurationError: When the credentials or the private key are not usable.
        """
        return TapRaiseClient(
            self.base_url(),
            self.service_account(),
            timeout=self.timeout(),
            max_connections=self.max_connections,
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

    def _sandbox_account(self) -> ServiceAccount:
        path = (self.sandbox_data_dir / SANDBOX_ACCOUNT_FILE).absolute()
        if not path.is_file():
            raise ConfigurationError(
                f"TAPRAISE_BASE_URL is not set, so the embedded sandbox at {SANDBOX_BASE_URL} is "
                f"used, but its demo account file {path} does not exist yet. Start the sandbox "
                "first (python -m sandbox), or set TAPRAISE_BASE_URL, "
                "TAPRAISE_ACCOUNT_EMAIL, TAPRAISE_PRIVATE_KEY_ID and TAPRAISE_PRIVATE_KEY "
                "(or TAPRAISE_PRIVATE_KEY_FILE) for a real TapRaise."
            )
        return ServiceAccount.from_file(path)


def make_client(settings: TapRaiseSettings | None = None) -> TapRaiseClient:
    """Build a ``TapRaiseClient`` from settings (read from the environment when omitted).

    Raises:
        ConfigurationError: When the settings or the private key are not usable.
    """
    return (settings or TapRaiseSettings()).make_client()


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
