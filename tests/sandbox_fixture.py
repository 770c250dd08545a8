"""The ``sandbox`` fixture: a real TapRaise sandbox process on a free loopback port.

One process serves the whole test session, as a development stand-in with an admin token;
helpers talk to its ``/_sandbox/`` routes (with that token) so tests can inject faults and
assert exactly what TapRaise received and applied.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from devstack.process import (
    Child,
    ChildError,
    free_port,
    sandbox_argv,
    wait_ready_blocking,
    write_private,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_SECONDS = 30.0


class SandboxServer:
    """A sandbox subprocess and helpers for its ``/_sandbox/`` routes.

    Attributes:
        base_url: Root URL (the TapRaise API is under ``/api/v1/``).
        data_dir: Where the store and ``service-account.json`` live.
        admin_token: The bearer token of its ``/_sandbox/`` routes (kept in a file beside the
            data directory, as a user's would be); None for a sandbox started without them.
        account_email: The demo service account's email.
        private_key_id: The demo account's key id (the JWT ``kid``).
        private_key_pem: The demo account's private key (PKCS#8 PEM).
    """

    def __init__(self, data_dir: Path, port: int, *, admin: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.admin_token: str | None = None
        token_file: Path | None = None
        if admin:
            self.admin_token = secrets.token_urlsafe(32)
            token_file = data_dir.with_name(f"{data_dir.name}-admin-token")
            write_private(token_file, self.admin_token + "\n")
        self.account_email = ""
        self.private_key_id = ""
        self.private_key_pem = ""
        # Admin routes only as asked here, whatever this machine's environment says.
        env = {k: v for k, v in os.environ.items() if k != "SANDBOX_ADMIN_TOKEN_FILE"}
        # Importable even when the project is not installed into the interpreter.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        argv = sandbox_argv(port, data_dir, admin_token_file=token_file)
        self._child = Child("sandbox", argv, data_dir / "sandbox.log", env, REPO_ROOT)
        self._admin = self._admin_client()

    # --- process -------------------------------------------------------------------------------

    def _admin_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/_sandbox", headers=self.admin_headers, timeout=10
        )

    @property
    def admin_headers(self) -> dict[str, str]:
        """The headers that open the ``/_sandbox/`` routes (none without an admin token)."""
        return {} if self.admin_token is None else {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def admin(self) -> httpx.Client:
        """An HTTP client of the ``/_sandbox/`` routes (paths relative to ``/_sandbox``)."""
        return self._admin

    def start(self) -> None:
        """Start the process and wait until ``/healthz`` answers."""
        self._child.start()

        def healthy() -> bool:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200

        try:
            wait_ready_blocking(self._child, healthy, "healthy", STARTUP_TIMEOUT_SECONDS)
        except ChildError:
            self.stop()
            raise
        credentials = json.loads((self.data_dir / "service-account.json").read_text())
        self.account_email = credentials["accountEmail"]
        self.private_key_id = credentials["privateKeyId"]
        self.private_key_pem = credentials["privateKey"]

    def stop(self) -> None:
        """Stop the process gracefully (SIGTERM), killing it if it does not exit in time."""
        self._child.stop()

    def restart(self) -> None:
        """Stop and start again on the same port and data directory.

        Settings and fault rules live in the process, so they are carried over to the new one
        (with only the forced faults that were still queued) as if the test had never paused.
        """
        settings, faults = self.settings(), self.faults()
        self.stop()
        self._admin.close()
        self._admin = self._admin_client()
        self.start()
        self.set_settings(**settings)
        if faults["rules"]:
            rules = [
                {**rule, "next": faults["queued"].get(rule["endpoint"], [])}
                for rule in faults["rules"]
            ]
            self.set_faults(rules, seed=faults["seed"])

    def close(self) -> None:
        """Stop the process and release the HTTP client."""
        self.stop()
        self._admin.close()

    # --- /_sandbox/ helpers ---------------------------------------------------------------------

    def _json(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def set_faults(self, rules: list[dict[str, Any]], seed: int | None = None) -> dict[str, Any]:
        """Replace the fault rules (see ``PUT /_sandbox/faults``)."""
        result: dict[str, Any] = self._json(
            self._admin.put("/faults", json={"seed": seed, "rules": rules})
        )
        return result

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._json(self._admin.delete("/faults"))

    def faults(self) -> dict[str, Any]:
        """Return the fault configuration, queued faults and counters."""
        result: dict[str, Any] = self._json(self._admin.get("/faults"))
        return result

    def requests(
        self, call_uuid: str | None = None, endpoint: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Return the logged API requests (oldest first), optionally filtered."""
        params: dict[str, Any] = {"limit": limit}
        if call_uuid is not None:
            params["callUuid"] = call_uuid
        if endpoint is not None:
            params["endpoint"] = endpoint
        result: list[dict[str, Any]] = self._json(self._admin.get("/requests", params=params))[
            "requests"
        ]
        return result

    def effects(self, call_uuid: str) -> dict[str, int]:
        """Return how many state changes of each action were applied to a call."""
        result: dict[str, int] = self._json(self._admin.get(f"/calls/{call_uuid}/effects"))
        return result

    def stored_call(self, call_uuid: str) -> dict[str, Any] | None:
        """Return the stored call (as the API renders it) or None."""
        response = self._admin.get(f"/calls/{call_uuid}")
        if response.status_code == 404:
            return None
        result: dict[str, Any] = self._json(response)
        return result

    def settings(self) -> dict[str, Any]:
        """Return the current settings.

        Keys: ``clockSkewSeconds``, ``resultCodes``, ``credentialOutage``,
        ``credentialOutageUntil``.
        """
        result: dict[str, Any] = self._json(self._admin.get("/settings"))
        return result

    def set_settings(self, **settings: Any) -> dict[str, Any]:
        """Change settings; absent ones keep their value.

        Keys: ``clockSkewSeconds``, ``resultCodes`` (a list or None), ``credentialOutage``
        (True or False), ``credentialOutageUntil`` (with ``credentialOutage``),
        ``credentialOutageSeconds``.
        """
        result: dict[str, Any] = self._json(self._admin.put("/settings", json=settings))
        return result

    def withdraw_credentials(self, seconds: float | None = None) -> dict[str, Any]:
        """Answer every API request with 401, for ``seconds`` or until restored."""
        if seconds is None:
            return self.set_settings(credentialOutage=True)
        return self.set_settings(credentialOutageSeconds=seconds)

    def restore_credentials(self) -> dict[str, Any]:
        """End a credential outage."""
        return self.set_settings(credentialOutage=False)

    def add_service_account(
        self, email: str, organization_uuids: list[str], actions: list[str]
    ) -> dict[str, str]:
        """Register a service account; returns ``{accountEmail, privateKeyId, privateKey}``."""
        body = {"email": email, "organizationUuids": organization_uuids, "actions": actions}
        result: dict[str, str] = self._json(self._admin.post("/service-accounts", json=body))
        return result

    def add_organization(
        self, name: str, max_call_attempts: int, uuid: str | None = None
    ) -> dict[str, Any]:
        """Create an organization; returns ``{uuid, name, maxCallAttempts}``."""
        body = {"uuid": uuid, "name": name, "maxCallAttempts": max_call_attempts}
        result: dict[str, Any] = self._json(self._admin.post("/organizations", json=body))
        return result

    def organization(self, uuid: str) -> dict[str, Any]:
        """Return ``{uuid, name, maxCallAttempts}`` of an organization."""
        result: dict[str, Any] = self._json(self._admin.get(f"/organizations/{uuid}"))
        return result

    def set_max_call_attempts(self, organization_uuid: str, max_call_attempts: int) -> None:
        """Change the maximum attempts TapRaise allows for the persons of an organization."""
        body = {"maxCallAttempts": max_call_attempts}
        self._json(self._admin.put(f"/organizations/{organization_uuid}", json=body))

    def add_person(
        self,
        owning_organization_uuid: str,
        uuid: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        phone_number: str | None = None,
    ) -> dict[str, Any]:
        """Create a person of an organization; returns the person."""
        body = {
            "uuid": uuid,
            "firstName": first_name,
            "lastName": last_name,
            "phoneNumber": phone_number,
            "owningOrganizationUuid": owning_organization_uuid,
        }
        result: dict[str, Any] = self._json(self._admin.post("/persons", json=body))
        return result

    def stats(self) -> dict[str, Any]:
        """Return totals: calls per status, API requests and changes made in the app per
        endpoint and status, faults, effects."""
        result: dict[str, Any] = self._json(self._admin.get("/stats"))
        return result

    def marks(
        self, entity_name: str | None = None, entity_uuid: str | None = None
    ) -> list[dict[str, Any]]:
        """Return the marks of processed entities (all, or those of one entity), oldest first.

        Each names the ``accountEmail`` that marked it and its ``consumerIdentifier``.
        """
        params = {"entityName": entity_name, "entityUuid": entity_uuid}
        given = {name: value for name, value in params.items() if value is not None}
        result: list[dict[str, Any]] = self._json(self._admin.get("/marks", params=given))["marks"]
        return result

    # --- the TapRaise app -----------------------------------------------------------------------

    def request_call_in_app(
        self, person_uuid: str, call_type: str, requested_by_user_uuid: str, **fields: Any
    ) -> dict[str, Any]:
        """Request a call as a user of the TapRaise app; returns the call.

        ``fields``: the optional camelCase fields (``uuid``, ``requestedAt``, ``notes``,
        ``callingOrganizationUuid``, ``relatedCaseUuid``).
        """
        body = {"personUuid": person_uuid, "type": call_type,
                "requestedByUserUuid": requested_by_user_uuid, **fields}  # fmt: skip
        result: dict[str, Any] = self._json(self._admin.post("/app/calls", json=body))
        return result

    def change_in_app(
        self, call_uuid: str, action: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """Change a call in the TapRaise app: ``action`` is ``add-attempt``, ``complete``,
        ``cancel`` or ``expire``, ``body`` the API action's (plus ``userUuid``)."""
        return self._admin.put(f"/app/calls/{call_uuid}/{action}", json=body or {})


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """A sandbox process for the whole session, on a free port with a fresh data directory."""
    server = SandboxServer(tmp_path_factory.mktemp("sandbox"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clean_faults(sandbox: SandboxServer) -> Iterator[None]:
    """Clear the sandbox's fault rules after the test, whatever happened."""
    yield
    sandbox.clear_faults()


# A change after a final one: 409 when it is the same again, else 400 (API and app alike).
FINAL_TRANSITIONS: Final = [
    ("complete", "complete", 409),
    ("complete", "cancel", 400),
    ("complete", "expire", 400),
    ("complete", "add-attempt", 400),
    ("cancel", "cancel", 409),
    ("cancel", "complete", 400),
    ("cancel", "expire", 400),
    ("cancel", "add-attempt", 400),
    ("expire", "expire", 409),
    ("expire", "complete", 400),
    ("expire", "cancel", 400),
    ("expire", "add-attempt", 400),
]
