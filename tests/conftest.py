"""Fixtures shared by every test module."""

import dataclasses
import os
from datetime import timedelta

import pytest

import devstack.process

# First: every process started below reads the run's encryption key from the environment.
from tests.keys_fixture import RUN_KEYS  # noqa: F401
from tests.sandbox_fixture import clean_faults, sandbox
from tests.temporal_fixture import (
    LOCAL,
    call_worker,
    lenient_sandbox,
    start_instant,
    start_kind,
    tapraise_client,
    temporal_env,
)
from workflows import retries

__all__ = [
    "call_worker",
    "clean_faults",
    "lenient_sandbox",
    "sandbox",
    "tapraise_client",
    "temporal_env",
]


def _share_ports_between_parallel_runs() -> None:
    # Under pytest-xdist each worker process picks free ports from a share of its own.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker.startswith("gw") and count > 1:
        devstack.process.port_share = (int(worker[2:]) % count, count)


_share_ports_between_parallel_runs()


def pytest_configure(config: pytest.Config) -> None:
    # A mistyped CALL_TESTS_START stops the run before any test, rather than failing each one.
    try:
        start_instant()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    first = start_instant().astimezone(LOCAL)
    return f"calls start at: {start_kind()} (next: {first:%a %Y-%m-%d %H:%M %Z})"


@pytest.fixture
def quick_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    """TapRaise retried in the usual rounds of five tries, 0.1 s apart at first instead of 1 s."""
    quick = dataclasses.replace(
        retries.TAPRAISE_RETRY, initial_interval=timedelta(milliseconds=100)
    )
    monkeypatch.setattr(retries, "TAPRAISE_RETRY", quick)


@pytest.fixture
def short_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """TapRaise retried in rounds of two quick tries: a test sees many rounds in a few seconds."""
    quick = dataclasses.replace(
        retries.TAPRAISE_RETRY, initial_interval=timedelta(milliseconds=100), maximum_attempts=2
    )
    monkeypatch.setattr(retries, "TAPRAISE_RETRY", quick)
