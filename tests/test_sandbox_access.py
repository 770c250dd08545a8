"""Who may reach the sandbox, and who may read its store.

By default the sandbox serves the TapRaise API and a bare health check only; its ``/_sandbox/``
routes (request log, key minting, faults, settings) exist only with an admin token, and answer
only requests that carry it. Its data directory and every file in it are its owner's alone,
whatever the umask. Everything goes over real HTTP to sandbox processes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.process import Child, ChildError, free_port, sandbox_argv, wait_ready_blocking
from tests.sandbox_fixture import REPO_ROOT, SandboxServer
from tests.test_sandbox import BROWSER_ACCEPT, assert_error, client_for, sign

pytestmark = pytest.mark.timeout(60)

# A sample of the /_sandbox/ routes: inspection, test data, the app, settings, faults, docs,
# the index.
ADMIN_ROUTES = [
    ("GET", "/_sandbox/requests"),
    ("GET", "/_sandbox/stats"),
    ("GET", "/_sandbox/marks"),
    ("GET", "/_sandbox/settings"),
    ("PUT", "/_sandbox/faults"),
    ("POST", "/_sandbox/service-accounts"),
    ("POST", "/_sandbox/persons"),
    ("POST", "/_sandbox/app/calls"),
    ("PUT", "/_sandbox/app/calls/0b6f8c1e-3f4a-4c51-9d0e-2a7b5c9e8f10/complete"),
    ("GET", "/_sandbox/docs"),
    ("GET", "/_sandbox/openapi.json"),
    ("GET", "/_sandbox/health"),
    ("GET", "/_sandbox/"),
    ("GET", "/_sandbox"),
]


@pytest.fixture(scope="module")
def bare_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    """A sandbox started as a user would start it: ``python -m sandbox``, no admin token."""
    server = SandboxServer(tmp_path_factory.mktemp("bare-sandbox"), free_port(), admin=False)
    server.start()
    try:
        yield server
    finally:
        server.close()


def env_without_admin_token() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_ADMIN_TOKEN_FILE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def start(child: Child, base_url: str) -> None:
    """Start a sandbox process and wait until its health check answers."""
    child.start()

    def healthy() -> bool:
        return httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200

    try:
        wait_ready_blocking(child, healthy, "healthy", 30)
    except ChildError:
        child.stop()
        raise


# --- without an admin token -------------------------------------------------------------------


def test_a_sandbox_without_admin_token_answers_health_with_nothing_more(
    bare_sandbox: SandboxServer,
) -> None:
    response = httpx.get(f"{bare_sandbox.base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_a_sandbox_without_admin_token_has_no_admin_routes(
    bare_sandbox: SandboxServer, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer anything-at-all-here"}):
        response = httpx.request(method, f"{bare_sandbox.base_url}{path}", headers=headers, json={})
        assert response.status_code == 404, (path, response.text)


def test_a_sandbox_without_admin_token_lists_only_the_api_and_health(
    bare_sandbox: SandboxServer,
) -> None:
    listed = httpx.get(f"{bare_sandbox.base_url}/").json()["pages"]
    assert {(page["method"], page["path"]) for page in listed} == {
        ("GET", "/healthz"),
        ("GET", "/api/v1/calls"),
    }
    page = httpx.get(f"{bare_sandbox.base_url}/", headers={"Accept": BROWSER_ACCEPT}).text
    assert "/_sandbox" not in page


def test_a_sandbox_without_admin_token_serves_the_api(bare_sandbox: SandboxServer) -> None:
    with client_for(bare_sandbox, sign(bare_sandbox)) as client:
        assert client.get("/calls", params={"first": 1}).status_code == 200
    assert_error(httpx.get(f"{bare_sandbox.base_url}/api/v1/calls"), 401)


# --- with an admin token ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_refuse_a_request_without_the_admin_token(
    sandbox: SandboxServer, method: str, path: str
) -> None:
    api_token = sign(sandbox)  # a service account's token opens the API, not these routes
    refused = [
        None,
        "Bearer wrong-token-of-some-length",
        f"Bearer {api_token}",
        f"Basic {sandbox.admin_token}",
        f"Bearer {sandbox.admin_token}x",
    ]
    for authorization in refused:
        headers = {} if authorization is None else {"Authorization": authorization}
        # An invalid body must not be looked at either: 401, never a 400 naming fields.
        response = httpx.request(method, f"{sandbox.base_url}{path}", headers=headers, json=[])
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert sandbox.admin_token is not None and sandbox.admin_token not in response.text


def test_admin_routes_answer_the_admin_token(sandbox: SandboxServer) -> None:
    for path in ("/_sandbox/requests", "/_sandbox/stats", "/_sandbox/docs", "/_sandbox/"):
        response = httpx.get(f"{sandbox.base_url}{path}", headers=sandbox.admin_headers)
        assert response.status_code == 200, (path, response.text)
    lowercase = {"authorization": f"bearer {sandbox.admin_token}"}
    assert httpx.get(f"{sandbox.base_url}/_sandbox/stats", headers=lowercase).status_code == 200


def test_the_admin_token_file_can_be_named_by_the_environment(tmp_path: Path) -> None:
    token = "an-admin-token-from-the-environment"
    token_file = tmp_path / "admin-token"
    token_file.write_text(token + "\n")
    port = free_port()
    env = {**env_without_admin_token(), "SANDBOX_ADMIN_TOKEN_FILE": str(token_file)}
    argv = sandbox_argv(port, tmp_path / "data")
    child = Child("sandbox", argv, tmp_path / "sandbox.log", env, REPO_ROOT)
    base_url = f"http://127.0.0.1:{port}"
    start(child, base_url)
    try:
        stats = f"{base_url}/_sandbox/stats"
        assert httpx.get(stats).status_code == 401
        assert httpx.get(stats, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        child.stop()
    assert "admin routes under /_sandbox/" in child.output()


@pytest.mark.parametrize("content", [None, "", "short-token"])
def test_an_unusable_admin_token_file_stops_the_sandbox_naming_the_file(
    tmp_path: Path, content: str | None
) -> None:
    token_file = tmp_path / "admin-token"
    if content is not None:
        token_file.write_text(content)
    argv = sandbox_argv(free_port(), tmp_path / "data", admin_token_file=token_file)
    child = Child("sandbox", argv, tmp_path / "sandbox.log", env_without_admin_token(), REPO_ROOT)
    child.start()
    code = child.wait(30)
    assert code is not None and code != 0
    output = child.output()
    assert f"admin token file {token_file}" in output, output
    if content:
        assert content not in output.replace(str(token_file), "")


# --- the store --------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def store_modes(data_dir: Path) -> dict[str, int]:
    """The mode of the data directory and of each file the store is made of."""
    names = [
        "sandbox.sqlite3",
        "sandbox.sqlite3-wal",
        "sandbox.sqlite3-shm",
        "service-account.json",
        "sandbox.log",
    ]
    return {".": mode(data_dir), **{name: mode(data_dir / name) for name in names}}


OWNER_ONLY = {
    ".": 0o700,
    "sandbox.sqlite3": 0o600,
    "sandbox.sqlite3-wal": 0o600,
    "sandbox.sqlite3-shm": 0o600,
    "service-account.json": 0o600,
    "sandbox.log": 0o600,
}


def test_the_store_and_its_log_are_readable_by_their_owner_only_whatever_the_umask(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o777)
    data_dir.chmod(0o777)
    port = free_port()
    server = SandboxServer(data_dir, port)
    # The loosest umask there is: every file the sandbox (and its log) makes would be
    # world-readable unless made owner-only on purpose.
    previous = os.umask(0)
    try:
        server.start()
    finally:
        os.umask(previous)
    try:
        with client_for(server, sign(server)) as client:  # writes to the store and its WAL
            assert client.get("/calls").status_code == 200
        assert store_modes(data_dir) == OWNER_ONLY
        server.stop()
        # A store left readable by an earlier version is tightened on the next start.
        data_dir.chmod(0o755)
        for name in ("sandbox.sqlite3", "service-account.json"):
            (data_dir / name).chmod(0o644)
        previous = os.umask(0)
        try:
            server.start()
        finally:
            os.umask(previous)
        with client_for(server, sign(server)) as client:
            assert client.get("/calls").status_code == 200
        assert store_modes(data_dir) == OWNER_ONLY
    finally:
        server.close()
