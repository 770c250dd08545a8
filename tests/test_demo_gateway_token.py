"""The embedded stack's gateway asks for a token, and the stack says which one to use.

No process is started here: the token, the lines to paste, the env file and the gateway's
environment are checked as the stack makes them (tests/test_stack.py runs the real stack).
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from devstack.demo import hand_call_uuid
from devstack.process import HOST, Child
from devstack.run import guide, paste_lines, write_env_file
from devstack.stack import (
    GATEWAY_TOKEN_FILE,
    GatewayAuth,
    Stack,
    StackConfig,
    StackKeys,
    gateway_token,
)
from sandbox.seed import DEMO_PERSON_UUIDS

CONFIGURED = "a-token-the-user-configured-0123456789"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def stack_for(config: StackConfig) -> Stack:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(config, asyncio.Event())
    stack.gateway_auth = GatewayAuth.for_stack(config)
    stack.keys = StackKeys.for_stack(config)
    return stack


def test_the_stacks_own_token_is_made_once_kept_and_private(tmp_path: Path) -> None:
    token = gateway_token(tmp_path)
    assert len(token) >= 40 and token.isascii() and " " not in token
    path = tmp_path / GATEWAY_TOKEN_FILE
    assert mode(path) == 0o600
    assert gateway_token(tmp_path) == token  # a second run keeps it
    assert gateway_token(tmp_path / "other") != token  # another data directory, another token
    path.chmod(0o644)
    assert gateway_token(tmp_path) == token and mode(path) == 0o600


def test_configured_tokens_win_and_are_never_shown(tmp_path: Path) -> None:
    config = StackConfig(data_dir=tmp_path, gateway_tokens=[SecretStr(CONFIGURED)])
    stack = stack_for(config)
    assert stack.gateway_auth is not None and stack.gateway_auth.shown is None
    assert stack.gateway_auth.env_value() == CONFIGURED
    assert not (tmp_path / GATEWAY_TOKEN_FILE).exists()
    text = guide(config, stack, str(hand_call_uuid()))
    write_env_file(config, paste_lines(config, stack))
    assert CONFIGURED not in text and CONFIGURED not in config.env_file.read_text()
    assert CONFIGURED not in repr(config)
    assert "GATEWAY_TOKENS" in text


def test_the_guide_shows_lines_to_paste_and_writes_them_for_source(tmp_path: Path) -> None:
    config = StackConfig(data_dir=tmp_path / "data")
    stack = stack_for(config)
    token = gateway_token(config.data_dir)
    call = str(hand_call_uuid())
    text = guide(config, stack, call)
    assert stack.keys is not None
    wanted = [
        f"export TEMPORAL_ADDRESS={config.temporal_address}",
        "export TEMPORAL_NAMESPACE=default",
        f"export TEMPORAL_CODEC_ENDPOINT={config.codec_url}",
        f"export ENCRYPTION_KEYS_FILE={stack.keys.file}",
        f"export GATEWAY={config.gateway_url}",
        f"export TOKEN={token}",
        f"export PERSON={DEMO_PERSON_UUIDS[0]}",
        f"export CALL={call}",
    ]
    for line in wanted:
        assert f"  {line}\n" in text
    assert 'python -m starter status "$CALL"' in text
    assert '-H "Authorization: Bearer $TOKEN" "$GATEWAY/calls/$CALL"' in text

    path = write_env_file(config, paste_lines(config, stack, call))
    assert path == config.data_dir / "demo.env" and mode(path) == 0o600
    assert [line for line in path.read_text().splitlines() if line.startswith("export")] == wanted
    sourced = subprocess.run(
        ["bash", "-c", 'source "$1" && echo "$GATEWAY $TOKEN $PERSON $CALL"', "-", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sourced == [config.gateway_url, token, DEMO_PERSON_UUIDS[0], call]


def test_without_the_demo_there_is_no_call_to_paste(tmp_path: Path) -> None:
    config = StackConfig(data_dir=tmp_path, temporal_port=7299)
    stack = stack_for(config)
    lines = paste_lines(config, stack)
    assert not any(line.startswith("export CALL=") for line in lines)
    assert "export TEMPORAL_ADDRESS=127.0.0.1:7299" in lines
    assert 'python -m starter start --person "$PERSON"' in guide(config, stack)


async def test_the_gateway_is_started_with_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_started(self: Child) -> None:
        return None

    monkeypatch.setattr(Child, "start", not_started)
    monkeypatch.setenv("GATEWAY_ALLOW_NO_AUTH", "true")
    config = StackConfig(data_dir=tmp_path)
    stack = stack_for(config)
    child = stack._start_gateway()
    assert child.env["GATEWAY_TOKENS"] == gateway_token(tmp_path)
    assert child.env["GATEWAY_ALLOW_NO_AUTH"] == "false"
    assert child.env["GATEWAY_HOST"] == HOST
