"""Payload encryption: the codec, its keys, and the codec server the Web UI decrypts through."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from encryption.codec import ENCODING, KEY_ID_METADATA, DecryptionError, EncryptionCodec
from encryption.keys import KeyRing, KeysError, ensure_demo_keys, load_keys, new_key_line
from encryption.server import CodecServerSettings, CodecSettingsError, build, create_app
from tests.helpers import serve
from tests.sandbox_fixture import REPO_ROOT

NOTE = "donor prefers the evening; lost her husband in May"
UI = "http://localhost:8233"


def plain(value: object) -> Payload:
    """A JSON payload as the pydantic converter writes it."""
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


def ring(*lines: str) -> KeyRing:
    return KeyRing.parse("\n".join(lines), "test keys")


OLD, NEW = new_key_line("old"), new_key_line("new")


# ── the codec ────────────────────────────────────────────────────────────────────────────────


async def test_a_payload_is_encrypted_under_the_writing_key_and_decrypts_to_itself() -> None:
    codec = EncryptionCodec(ring(NEW, OLD))
    original = plain({"notes": NOTE})
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == b"new"
    assert NOTE.encode() not in sealed.SerializeToString()
    [opened] = await codec.decode([sealed])
    assert opened == original
    # A fresh nonce each time: the same payload never encrypts to the same bytes.
    [again] = await codec.encode([original])
    assert again.data != sealed.data


async def test_after_a_rotation_old_payloads_still_decrypt_and_new_ones_use_the_new_key() -> None:
    [written_before] = await EncryptionCodec(ring(OLD)).encode([plain(NOTE)])
    rotated = EncryptionCodec(ring(NEW, OLD))
    assert await rotated.decode([written_before]) == [plain(NOTE)]
    [written_after] = await rotated.encode([plain(NOTE)])
    assert written_after.metadata[KEY_ID_METADATA] == b"new"
    # A process that never got the new key names it instead of failing obscurely.
    with pytest.raises(DecryptionError, match="'new'"):
        await EncryptionCodec(ring(OLD)).decode([written_after])


async def test_an_altered_payload_or_another_key_of_the_same_id_is_refused() -> None:
    codec = EncryptionCodec(ring(NEW))
    [sealed] = await codec.encode([plain(NOTE)])
    altered = Payload()
    altered.CopyFrom(sealed)
    altered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(DecryptionError, match="does not authenticate"):
        await codec.decode([altered])
    with pytest.raises(DecryptionError, match="does not authenticate"):
        await EncryptionCodec(ring(new_key_line("new"))).decode([sealed])


async def test_payloads_written_before_encryption_pass_through() -> None:
    codec = EncryptionCodec(ring(NEW))
    assert await codec.decode([plain({"a": 1})]) == [plain({"a": 1})]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("no-equals-sign", "is not `<key id>=<base64 key>`"),
        ("bad id!=" + base64.b64encode(bytes(32)).decode(), "is not `<key id>=<base64 key>`"),
        ("k=not base64!", "is not base64"),
        ("k=" + base64.b64encode(bytes(16)).decode(), "is 16 bytes; AES-256 needs 32"),
        (f"{NEW}\n{NEW}", "appears twice"),
    ],
    ids=["empty", "comment", "no-equals", "bad-id", "not-base64", "short", "twice"],
)
def test_unusable_keys_are_refused_without_showing_a_key(text: str, problem: str) -> None:
    with pytest.raises(KeysError, match=problem) as refused:
        KeyRing.parse(text, "ENCRYPTION_KEYS")
    assert "ENCRYPTION_KEYS" in str(refused.value)
    assert NEW.split("=", 1)[1] not in str(refused.value)


def test_keys_come_from_the_variable_the_file_or_the_embedded_stacks_file(tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text(f"# rotated in May\n{NEW}\n{OLD}\n")
    from_file = load_keys({"ENCRYPTION_KEYS_FILE": str(file)}, tmp_path)
    assert (
        from_file is not None
        and from_file.writer == "new"
        and set(from_file.keys)
        == {
            "new",
            "old",
        }
    )
    inline = load_keys({"ENCRYPTION_KEYS": f"{OLD},{NEW}"}, tmp_path)
    assert inline is not None and inline.writer == "old"
    with pytest.raises(KeysError, match="not both"):
        load_keys({"ENCRYPTION_KEYS": NEW, "ENCRYPTION_KEYS_FILE": str(file)}, tmp_path)
    assert load_keys({}, tmp_path) is None
    demo = ensure_demo_keys(tmp_path / ".data" / "encryption-keys")
    assert stat.S_IMODE((tmp_path / ".data" / "encryption-keys").stat().st_mode) == 0o600
    assert load_keys({}, tmp_path) == demo
    # Made once: a second start reads the same key back.
    assert ensure_demo_keys(tmp_path / ".data" / "encryption-keys") == demo


def test_a_process_without_keys_says_how_to_make_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCRYPTION_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "starter", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "ENCRYPTION_KEYS_FILE" in done.stdout + done.stderr
    assert "python -m encryption new-key" in done.stdout + done.stderr
    # The gateway fails at start, not with a 503 for every request.
    gateway = subprocess.run(
        [sys.executable, "-m", "starter", "serve", "--port", "1"],
        cwd=tmp_path,
        env={**env, "GATEWAY_TOKENS": "a-token-of-the-gateway"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gateway.returncode != 0
    assert "ENCRYPTION_KEYS_FILE" in gateway.stdout + gateway.stderr
    made = subprocess.run(
        [sys.executable, "-m", "encryption", "new-key", "--id", "k2027"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ring(made.stdout.strip()).writer == "k2027"


# ── the codec server ─────────────────────────────────────────────────────────────────────────


def body(*payloads: Payload) -> str:
    return json_format.MessageToJson(Payloads(payloads=list(payloads)))


@pytest.fixture
async def open_server() -> AsyncIterator[str]:
    """A codec server without tokens (loopback, as the embedded stack runs it)."""
    async with serve(create_app(EncryptionCodec(ring(NEW)), (), [UI])) as url:
        yield url


async def test_the_web_ui_decrypts_through_the_codec_server(open_server: str) -> None:
    [sealed] = await EncryptionCodec(ring(NEW)).encode([plain({"notes": NOTE})])
    async with httpx.AsyncClient(base_url=open_server) as http:
        headers = {"Origin": UI, "X-Namespace": "default", "Content-Type": "application/json"}
        answer = await http.post("/decode", content=body(sealed), headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == UI
        [opened] = json_format.Parse(answer.text, Payloads()).payloads
        assert json.loads(opened.data) == {"notes": NOTE}
        preflight = await http.options(
            "/decode",
            headers={"Origin": UI, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert "x-namespace" in preflight.headers["access-control-allow-headers"]
        encoded = await http.post("/encode", content=body(plain(NOTE)), headers=headers)
        [sealed_again] = json_format.Parse(encoded.text, Payloads()).payloads
        assert sealed_again.metadata["encoding"] == ENCODING


async def test_another_site_or_a_rebound_name_gets_nothing_decrypted(open_server: str) -> None:
    [sealed] = await EncryptionCodec(ring(NEW)).encode([plain({"notes": NOTE})])
    async with httpx.AsyncClient(base_url=open_server) as http:
        evil = await http.post(
            "/decode", content=body(sealed), headers={"Origin": "http://evil.example"}
        )
        assert evil.status_code == 403 and NOTE not in evil.text
        assert "access-control-allow-origin" not in evil.headers
        preflight = await http.options(
            "/decode",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 403
        rebound = await http.post(
            "/decode", content=body(sealed), headers={"Host": "evil.example:8082"}
        )
        assert rebound.status_code == 403 and NOTE not in rebound.text


async def test_with_tokens_a_caller_without_one_is_refused() -> None:
    [sealed] = await EncryptionCodec(ring(NEW)).encode([plain({"notes": NOTE})])
    app = create_app(EncryptionCodec(ring(NEW)), (b"ui-secret",), [UI])
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.post("/decode", content=body(sealed))
        assert refused.status_code == 401 and NOTE not in refused.text
        wrong = await http.post(
            "/decode", content=body(sealed), headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        allowed = await http.post(
            "/decode", content=body(sealed), headers={"Authorization": "Bearer ui-secret"}
        )
        assert (
            allowed.status_code == 200
            and NOTE in base64.b64decode(json.loads(allowed.text)["payloads"][0]["data"]).decode()
        )
        # Answers nothing about itself to whoever asks.
        assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_bad_bodies_get_clear_errors(open_server: str) -> None:
    [foreign] = await EncryptionCodec(ring(OLD)).encode([plain(NOTE)])
    async with httpx.AsyncClient(base_url=open_server) as http:
        assert (await http.post("/decode", content=b"{not json")).status_code == 400
        unknown_key = await http.post("/decode", content=body(foreign))
        assert unknown_key.status_code == 422 and "'old'" in unknown_key.text
        too_big = await http.post("/decode", content=b"x" * (9 * 1024 * 1024))
        assert too_big.status_code == 413


def test_a_codec_server_off_loopback_needs_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCRYPTION_KEYS", NEW)
    monkeypatch.delenv("ENCRYPTION_KEYS_FILE", raising=False)
    with pytest.raises(CodecSettingsError, match="CODEC_SERVER_TOKENS_FILE"):
        build(CodecServerSettings(_env_file=None, host="0.0.0.0"))
    build(CodecServerSettings(_env_file=None, host="0.0.0.0", tokens="t1"))
    build(CodecServerSettings(_env_file=None, host="127.0.0.1"))
