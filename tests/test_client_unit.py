"""Client behaviour a real server can't easily produce, driven through httpx.MockTransport.

Every endpoint and status code against the real sandbox is covered by the HTTP tests; this file
keeps to token signing, error classification and transport failures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from tapraise import errors
from tapraise.auth import ServiceAccount, TokenSigner
from tapraise.client import ObservedRequest, TapRaiseClient
from tapraise.models import CallResult, CompleteCallRequest, CreateCallRequest, ExpireCallRequest
from tapraise.settings import TapRaiseSettings, make_client

pytestmark = pytest.mark.timeout(30)

CALL_UUID = "5cf67f69-34d0-46fe-b904-20d56248a844"
PERSON = "f5e2ba11-1786-4ba9-bd5a-0d99317f4706"
CALL_BODY: dict[str, Any] = {
    "uuid": CALL_UUID,
    "status": "expired",
    "type": "verification",
    "requestedAt": "2025-05-17T12:36:18.174Z",
    "expiredAt": "2025-05-18T12:36:18.174Z",
    "personUuid": PERSON,
}
T0 = datetime(2025, 5, 17, 12, 0, tzinfo=UTC)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def account(rsa_key: rsa.RSAPrivateKey) -> ServiceAccount:
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return ServiceAccount(email="calls@example.org", private_key_id="key-1", private_key_pem=pem)


class Clock:
    """A hand-driven clock; ``tick`` advances it on every read when set."""

    def __init__(self, now: datetime = T0, tick: timedelta = timedelta(0)) -> None:
        self.now = now
        self.tick = tick

    def __call__(self) -> datetime:
        current = self.now
        self.now += self.tick
        return current


@pytest.fixture
def requests_seen() -> list[httpx.Request]:
    return []


def client_for(
    account: ServiceAccount,
    handler: Handler,
    seen: list[httpx.Request],
    signer: TokenSigner | None = None,
) -> TapRaiseClient:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return TapRaiseClient(
        "https://tapraise.test/api/v1/",
        account,
        transport=httpx.MockTransport(record),
        signer=signer,
    )


def bearer(request: httpx.Request) -> str:
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


# --- authentication ---------------------------------------------------------------------------


async def test_requests_carry_a_signed_jwt_and_the_standard_headers(
    account: ServiceAccount, rsa_key: rsa.RSAPrivateKey, requests_seen: list[httpx.Request]
) -> None:
    async with client_for(
        account, lambda r: httpx.Response(200, json=CALL_BODY), requests_seen
    ) as client:
        call = await client.expire_call(CALL_UUID)

    assert str(call.uuid) == CALL_UUID
    request = requests_seen[0]
    assert request.method == "PUT"
    assert str(request.url) == f"https://tapraise.test/api/v1/calls/{CALL_UUID}/actions/expire"
    assert json.loads(request.content) == {}
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith("tapraise-calls/")
    token = bearer(request)
    assert jwt.get_unverified_header(token)["kid"] == "key-1"
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, rsa_key.public_key(), algorithms=["RS256"])
    assert claims["email"] == claims["iss"] == "calls@example.org"
    # Valid five minutes from now, issued a minute ago: a server whose clock runs behind ours
    # does not see a token from its future.
    assert claims["exp"] - claims["iat"] == 360


def test_token_is_cached_and_resigned_when_less_than_a_minute_remains(
    account: ServiceAccount, rsa_key: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    signer = TokenSigner(account, clock=clock)

    first = signer.token()
    clock.now = T0 + timedelta(minutes=3, seconds=59)
    assert signer.token() == first
    clock.now = T0 + timedelta(minutes=4, seconds=1)
    renewed = signer.token()

    assert renewed != first
    claims = jwt.decode(
        renewed,
        rsa_key.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iat"] == int((T0 + timedelta(minutes=3, seconds=1)).timestamp())
    assert claims["exp"] == int((T0 + timedelta(minutes=9, seconds=1)).timestamp())


def test_invalidate_forces_a_new_signature(account: ServiceAccount) -> None:
    clock = Clock()
    signer = TokenSigner(account, clock=clock)
    first = signer.token()
    clock.now += timedelta(seconds=1)

    assert signer.token() == first
    signer.invalidate()
    assert signer.token() != first


async def test_a_401_discards_the_token_and_retries_once_with_a_fresh_one(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    answers = iter(
        [httpx.Response(401, json={"message": "expired"}), httpx.Response(200, json=CALL_BODY)]
    )
    signer = TokenSigner(account, clock=Clock(tick=timedelta(seconds=1)))

    async with client_for(account, lambda r: next(answers), requests_seen, signer) as client:
        call = await client.expire_call(CALL_UUID, ExpireCallRequest())

    assert str(call.uuid) == CALL_UUID
    assert len(requests_seen) == 2
    assert bearer(requests_seen[0]) != bearer(requests_seen[1])
    assert requests_seen[0].content == requests_seen[1].content


async def test_a_second_401_is_final(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    def deny(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"statusCode": 401, "message": "unknown kid"})

    async with client_for(account, deny, requests_seen) as client:
        with pytest.raises(errors.AuthenticationError, match="unknown kid") as info:
            await client.cancel_call(CALL_UUID)

    assert len(requests_seen) == 2
    token = bearer(requests_seen[-1])
    assert token not in str(info.value)
    assert token not in repr(info.value)


def test_an_invalid_private_key_is_a_configuration_error_that_hides_the_key() -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nTm90QUtleQ==\n-----END PRIVATE KEY-----\n"
    account = ServiceAccount(email="a@example.org", private_key_id="k", private_key_pem=secret)

    with pytest.raises(errors.ConfigurationError, match="TAPRAISE_PRIVATE_KEY") as info:
        TokenSigner(account)

    assert "Tm90QUtleQ" not in str(info.value)


def test_a_non_rsa_key_is_refused() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )

    with pytest.raises(errors.ConfigurationError, match="not an RSA key"):
        TokenSigner(ServiceAccount(email="a@example.org", private_key_id="k", private_key_pem=pem))


def test_service_account_repr_hides_the_key_and_reads_the_sandbox_file_format(
    account: ServiceAccount, tmp_path: Path
) -> None:
    path = tmp_path / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "accountEmail": account.email,
                "privateKeyId": account.private_key_id,
                "privateKey": account.private_key_pem,
            }
        )
    )

    loaded = ServiceAccount.from_file(path)

    assert loaded == account
    assert "PRIVATE KEY" not in repr(loaded)
    assert "PRIVATE KEY" not in repr(TokenSigner(loaded))


def test_service_account_file_missing_a_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({"accountEmail": "a@example.org"}))

    with pytest.raises(errors.ConfigurationError, match="privateKeyId, privateKey"):
        ServiceAccount.from_file(path)


# --- error classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, errors.BadRequestError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (429, errors.RateLimitError),
        (500, errors.InternalServerError),
        (503, errors.InternalServerError),
        (599, errors.InternalServerError),
        (418, errors.APIStatusError),
    ],
)
async def test_statuses_map_to_typed_errors_with_the_body_message(
    account: ServiceAccount,
    requests_seen: list[httpx.Request],
    status: int,
    error_type: type[errors.APIStatusError],
) -> None:
    body = {"statusCode": status, "message": "nope", "errors": [{"field": "x", "message": "y"}]}

    async with client_for(
        account, lambda r: httpx.Response(status, json=body), requests_seen
    ) as client:
        with pytest.raises(errors.APIStatusError) as info:
            await client.expire_call(CALL_UUID)

    err = info.value
    assert type(err) is error_type
    assert err.status_code == status
    assert err.message == "nope"
    assert err.body == body
    assert err.response.status_code == status
    assert err.request.url.path.endswith("/actions/expire")
    assert str(err).startswith(f"TapRaise answered {status} ")
    assert len(requests_seen) == 1  # no retries in the client


async def test_a_non_json_error_body_becomes_the_message(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    html = "<html><body>502 Bad Gateway</body></html>"

    async with client_for(
        account, lambda r: httpx.Response(502, text=html), requests_seen
    ) as client:
        with pytest.raises(errors.InternalServerError) as info:
            await client.expire_call(CALL_UUID)

    assert info.value.body is None
    assert info.value.message == html
    assert str(info.value) == (
        f"TapRaise answered 502 Bad Gateway on PUT /api/v1/calls/{CALL_UUID}/actions/expire: "
        + html
    )


async def test_a_list_of_messages_is_joined(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    body = {"statusCode": 400, "message": ["resultCode is empty", "rating too high"]}
    req = CompleteCallRequest(result=CallResult(result_code="confirmed"))

    async with client_for(
        account, lambda r: httpx.Response(400, json=body), requests_seen
    ) as client:
        with pytest.raises(errors.BadRequestError, match="resultCode is empty; rating too high"):
            await client.complete_call(CALL_UUID, req)


async def test_retry_after_as_an_http_date_is_parsed_into_seconds(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    headers = {"Retry-After": format_datetime(when, usegmt=True)}

    async with client_for(
        account, lambda r: httpx.Response(429, headers=headers), requests_seen
    ) as client:
        with pytest.raises(errors.RateLimitError) as info:
            await client.expire_call(CALL_UUID)

    assert info.value.retry_after is not None
    assert 110 <= info.value.retry_after <= 121


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)

    assert errors.parse_retry_after(header, now=now) == expected


async def test_a_success_with_an_unexpected_body_is_a_response_validation_error(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    async with client_for(
        account, lambda r: httpx.Response(200, json={"uuid": "x"}), requests_seen
    ) as client:
        with pytest.raises(errors.APIResponseValidationError, match="not a valid Call") as info:
            await client.expire_call(CALL_UUID)
    assert "problem(s), first: uuid: Input should be a valid UUID" in str(info.value)


# --- transport failures -----------------------------------------------------------------------


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return handler


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout]
)
async def test_timeouts_become_api_timeout_errors(
    account: ServiceAccount,
    requests_seen: list[httpx.Request],
    exc_type: type[httpx.TransportError],
) -> None:
    async with client_for(account, raising(exc_type), requests_seen) as client:
        with pytest.raises(errors.APITimeoutError, match=exc_type.__name__) as info:
            await client.expire_call(CALL_UUID)

    assert info.value.request is requests_seen[0]
    assert len(requests_seen) == 1


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError]
)
async def test_connection_failures_become_api_connection_errors(
    account: ServiceAccount,
    requests_seen: list[httpx.Request],
    exc_type: type[httpx.TransportError],
) -> None:
    async with client_for(account, raising(exc_type), requests_seen) as client:
        with pytest.raises(errors.APIConnectionError) as info:
            await client.expire_call(CALL_UUID)

    assert not isinstance(info.value, errors.APITimeoutError)
    assert bearer(requests_seen[0]) not in str(info.value)


# --- observers ----------------------------------------------------------------------------------


class Watcher:
    """A request observer that notes what it saw, and adds a header of its own."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str, int | None, str | None]] = []

    @contextmanager
    def observe(self, request: ObservedRequest) -> Iterator[None]:
        request.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        failure: str | None = None
        try:
            yield
        except Exception as exc:
            failure = type(exc).__name__
            raise
        finally:
            self.seen.append(
                (
                    request.endpoint.value,
                    request.method,
                    request.template,
                    request.server,
                    request.status,
                    failure,
                )
            )


async def test_observers_see_each_request_by_endpoint_and_template_and_may_add_headers(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    answers = iter([httpx.Response(401), httpx.Response(200, json=CALL_BODY)])

    def answer(request: httpx.Request) -> httpx.Response:
        requests_seen.append(request)
        return next(answers)

    watcher = Watcher()
    async with TapRaiseClient(
        "https://tapraise.test",
        account,
        transport=httpx.MockTransport(answer),
        observers=[watcher],
    ) as client:
        await client.expire_call(CALL_UUID)
    template = "/api/v1/calls/{call_uuid}/actions/expire"
    # The request repeated after a 401 is a request of its own.
    assert watcher.seen == [
        ("expire", "PUT", template, "tapraise.test", 401, None),
        ("expire", "PUT", template, "tapraise.test", 200, None),
    ]
    assert all(r.headers["traceparent"].startswith("00-0af7") for r in requests_seen)
    assert all(r.headers["Authorization"].startswith("Bearer ") for r in requests_seen)


async def test_observers_see_a_request_without_an_answer_fail(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    watcher = Watcher()
    async with TapRaiseClient(
        "https://tapraise.test",
        account,
        transport=httpx.MockTransport(raising(httpx.ConnectError)),
        observers=[watcher],
    ) as client:
        with pytest.raises(errors.APIConnectionError):
            await client.create_call(
                CreateCallRequest(person_uuid=PERSON, type="verification", requested_at=T0)
            )
    failed = ("create", "POST", "/api/v1/calls", "tapraise.test", None, "ConnectError")
    assert watcher.seen == [failed]


async def test_default_timeouts_are_per_phase(account: ServiceAccount) -> None:
    seen: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=CALL_BODY)

    async with client_for(account, handler, []) as client:
        await client.expire_call(CALL_UUID)

    assert seen == [{"connect": 5.0, "read": 15.0, "write": 10.0, "pool": 20.0}]


# --- paging edge cases ------------------------------------------------------------------------


async def test_listing_stops_when_a_cursor_does_not_move(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    page = {
        "edges": [{"node": CALL_BODY, "cursor": "c1"}],
        "pageInfo": {"startCursor": "c1", "endCursor": "c1", "hasNextPage": True},
    }

    async with client_for(
        account, lambda r: httpx.Response(200, json=page), requests_seen
    ) as client:
        calls = [call async for call in client.list_calls(page_size=1)]

    assert len(calls) == 2
    assert [dict(r.url.params) for r in requests_seen] == [
        {"first": "1"},
        {"first": "1", "after": "c1"},
    ]


async def test_list_arguments_tapraise_would_refuse_fail_before_sending(
    account: ServiceAccount, requests_seen: list[httpx.Request]
) -> None:
    async with client_for(account, lambda r: httpx.Response(500), requests_seen) as client:
        with pytest.raises(ValueError, match="first and last"):
            await client.list_calls_page(first=1, last=1)
        with pytest.raises(ValueError, match="between 1 and 100"):
            await client.list_calls_page(first=101)
        with pytest.raises(ValueError, match="requested_after must be timezone-aware"):
            await client.list_calls_page(requested_after=datetime(2025, 1, 1))
        await client.mark_processed([])

    assert requests_seen == []


# --- settings ---------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in (
        "TAPRAISE_BASE_URL",
        "TAPRAISE_ALLOW_HTTP",
        "TAPRAISE_ACCOUNT_EMAIL",
        "TAPRAISE_PRIVATE_KEY_ID",
        "TAPRAISE_PRIVATE_KEY",
        "TAPRAISE_PRIVATE_KEY_FILE",
        "TAPRAISE_SANDBOX_DATA_DIR",
        "TAPRAISE_TIMEOUT_SECONDS",
        "TAPRAISE_MAX_CONNECTIONS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # away from any developer .env
    yield tmp_path


def test_settings_without_url_name_no_tapraise_and_say_what_to_set(clean_env: Path) -> None:
    settings = TapRaiseSettings()

    with pytest.raises(errors.ConfigurationError, match="TAPRAISE_BASE_URL is not set") as info:
        settings.base_url()
    assert "https://" in str(info.value) and "make run" in str(info.value)
    with pytest.raises(errors.ConfigurationError, match="TAPRAISE_BASE_URL is not set"):
        settings.make_client()


def test_settings_with_a_sandbox_data_dir_explain_a_missing_account_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", "http://127.0.0.1:8081")
    monkeypatch.setenv("TAPRAISE_SANDBOX_DATA_DIR", str(clean_env / "sandbox"))

    with pytest.raises(errors.ConfigurationError, match=r"python -m sandbox"):
        TapRaiseSettings().service_account()


@pytest.mark.parametrize(
    "url",
    ["https://api.example.org", "http://127.0.0.1:8081", "http://127.8.9.10/",
     "http://[::1]:8081", "http://localhost:8081"],
)  # fmt: skip
def test_settings_accept_https_and_plain_http_on_loopback(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", url)

    assert TapRaiseSettings().base_url() == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://sandbox:8081", "http://10.0.0.5", "http://api.example.org", "http://[::2]"]
)
def test_settings_refuse_plain_http_off_loopback_naming_the_setting(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", url)

    with pytest.raises(ValidationError) as info:
        TapRaiseSettings()
    message = errors.describe_validation_error(info.value, "settings")
    assert "TAPRAISE_BASE_URL must use https" in message
    assert "TAPRAISE_ALLOW_HTTP=true" in message


def test_settings_take_plain_http_off_loopback_when_allowed_explicitly(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", "http://sandbox:8081")
    monkeypatch.setenv("TAPRAISE_ALLOW_HTTP", "true")

    assert TapRaiseSettings().base_url() == "http://sandbox:8081"


def test_settings_with_url_require_every_credential(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", "https://api.example.org/")
    monkeypatch.setenv("TAPRAISE_ACCOUNT_EMAIL", "calls@example.org")

    settings = TapRaiseSettings()

    assert settings.base_url() == "https://api.example.org"
    with pytest.raises(
        errors.ConfigurationError, match="TAPRAISE_PRIVATE_KEY_ID, TAPRAISE_PRIVATE_KEY"
    ):
        settings.service_account()


def test_settings_reject_placeholders_without_echoing_secrets(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", "https://api.example.org")
    monkeypatch.setenv("TAPRAISE_ACCOUNT_EMAIL", "calls@example.org")
    monkeypatch.setenv("TAPRAISE_PRIVATE_KEY_ID", "key-1")
    monkeypatch.setenv("TAPRAISE_PRIVATE_KEY", "changeme")

    settings = TapRaiseSettings()

    assert "changeme" not in repr(settings)
    with pytest.raises(
        errors.ConfigurationError, match="TAPRAISE_PRIVATE_KEY looks like a placeholder"
    ):
        settings.service_account()


def test_settings_read_the_key_from_text_with_escaped_newlines(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, account: ServiceAccount
) -> None:
    monkeypatch.setenv("TAPRAISE_BASE_URL", "https://api.example.org")
    monkeypatch.setenv("TAPRAISE_ACCOUNT_EMAIL", account.email)
    monkeypatch.setenv("TAPRAISE_PRIVATE_KEY_ID", account.private_key_id)
    monkeypatch.setenv("TAPRAISE_PRIVATE_KEY", account.private_key_pem.replace("\n", "\\n"))

    loaded = TapRaiseSettings().service_account()

    assert loaded.private_key_pem.strip() == account.private_key_pem.strip()
    TokenSigner(loaded).token()


async def test_make_client_uses_the_sandbox_account_file_and_timeout(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, account: ServiceAccount
) -> None:
    (clean_env / "sandbox").mkdir()
    (clean_env / "sandbox" / "service-account.json").write_text(
        json.dumps(
            {
                "accountEmail": account.email,
                "privateKeyId": account.private_key_id,
                "privateKey": account.private_key_pem,
            }
        )
    )
    monkeypatch.setenv("TAPRAISE_BASE_URL", "http://127.0.0.1:8081")
    monkeypatch.setenv("TAPRAISE_SANDBOX_DATA_DIR", str(clean_env / "sandbox"))
    monkeypatch.setenv("TAPRAISE_TIMEOUT_SECONDS", "2.5")

    assert TapRaiseSettings().timeout() == httpx.Timeout(2.5)
    assert TapRaiseSettings().service_account() == account
    async with make_client() as client:
        assert client.base_url == "http://127.0.0.1:8081"


def test_settings_take_a_connection_limit_and_refuse_a_bad_one(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TapRaiseSettings().max_connections == 10
    monkeypatch.setenv("TAPRAISE_MAX_CONNECTIONS", "3")
    assert TapRaiseSettings().max_connections == 3
    monkeypatch.setenv("TAPRAISE_MAX_CONNECTIONS", "0")
    with pytest.raises(ValidationError, match="max_connections"):
        TapRaiseSettings()


def test_validation_errors_are_described_per_field() -> None:
    with pytest.raises(ValidationError) as info:
        CompleteCallRequest.model_validate({"result": {"resultCode": ""}, "extra": 1})

    assert errors.describe_validation_error(info.value, "body") == (
        "result.resultCode: String should have at least 1 character; "
        "extra: Extra inputs are not permitted"
    )
    with pytest.raises(ValidationError) as info:
        CompleteCallRequest.model_validate([])
    assert errors.describe_validation_error(info.value).startswith("value: ")
