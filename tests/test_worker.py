"""The worker refuses to start, saying what to do, when Temporal or TapRaise is not usable."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from starter.connect import missing_search_attributes
from tapraise import TapRaiseClient
from tests.helpers import demo_account, fresh_private_key_pem
from tests.sandbox_fixture import SandboxServer
from tests.temporal_fixture import temporal_cli
from worker import check_tapraise

pytestmark = pytest.mark.timeout(60)

# A TapRaise named as a deployment would; the worker refuses to start without one.
TAPRAISE = {"TAPRAISE_BASE_URL": "https://tapraise.example"}


async def run_worker(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """`python -m worker` in `cwd` with `env` and none of this machine's TapRaise settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TAPRAISE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        cwd=cwd,
        env={**inherited, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    return process.returncode or 0, output.decode()


async def test_worker_without_temporal_exits_naming_the_address(tmp_path: Path) -> None:
    code, output = await run_worker({"TEMPORAL_ADDRESS": "127.0.0.1:9", **TAPRAISE}, tmp_path)
    assert code == 1
    assert "cannot reach Temporal at 127.0.0.1:9" in output and "TEMPORAL_ADDRESS" in output


async def test_worker_refuses_a_namespace_without_the_search_attributes(tmp_path: Path) -> None:
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), data_converter=pydantic_data_converter
    ) as bare:
        assert "CallPhase (Keyword)" in await missing_search_attributes(bare.client)
        target = bare.client.service_client.config.target_host
        code, output = await run_worker({"TEMPORAL_ADDRESS": target, **TAPRAISE}, tmp_path)
    assert code != 0
    assert "lacks the search attributes" in output and "CallPhase" in output


async def test_worker_without_a_tapraise_url_exits_saying_what_to_set(tmp_path: Path) -> None:
    # No sandbox is assumed: a deployment that forgot the setting must not run against one.
    code, output = await run_worker({"TEMPORAL_ADDRESS": "127.0.0.1:9"}, tmp_path)
    assert code == 1, output
    assert "TAPRAISE_BASE_URL is not set" in output, output
    assert "https://" in output and "TAPRAISE_ACCOUNT_EMAIL" in output
    assert "cannot reach Temporal" not in output  # refused before connecting to anything


async def test_worker_refuses_plain_http_to_a_remote_tapraise_naming_the_settings(
    tmp_path: Path,
) -> None:
    env = {"TEMPORAL_ADDRESS": "127.0.0.1:9", "TAPRAISE_BASE_URL": "http://tapraise.example"}
    code, output = await run_worker(env, tmp_path)
    assert code == 1, output
    assert "TAPRAISE_BASE_URL must use https" in output and "TAPRAISE_ALLOW_HTTP" in output
    # Allowed explicitly, the worker goes on to Temporal (unreachable here).
    code, output = await run_worker({**env, "TAPRAISE_ALLOW_HTTP": "true"}, tmp_path)
    assert code == 1 and "cannot reach Temporal at 127.0.0.1:9" in output, output


async def test_unreachable_tapraise_is_reported_but_does_not_stop_the_worker(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    account = demo_account(sandbox)
    async with TapRaiseClient("http://127.0.0.1:9", account) as client:
        with caplog.at_level(logging.WARNING, logger="tapraise_calls.worker"):
            await check_tapraise(client)  # an outage must not keep a restarted worker down
    assert "TapRaise at http://127.0.0.1:9 does not answer now" in caplog.text


async def test_refused_credentials_are_reported_but_do_not_stop_the_worker(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    pem = fresh_private_key_pem()
    account = demo_account(sandbox, pem)
    async with TapRaiseClient(sandbox.base_url, account) as client:
        with caplog.at_level(logging.WARNING, logger="tapraise_calls.worker"):
            await check_tapraise(client)  # a key being rotated must not keep workers down
    [record] = [r for r in caplog.records if "refuses the service account" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "TAPRAISE_PRIVATE_KEY_ID" in record.getMessage()
    assert pem.splitlines()[1] not in caplog.text


async def test_good_credentials_pass_the_start_up_check(sandbox: SandboxServer) -> None:
    account = demo_account(sandbox)
    async with TapRaiseClient(sandbox.base_url, account) as client:
        await check_tapraise(client)
