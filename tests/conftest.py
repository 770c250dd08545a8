"""Fixtures shared by every test module."""

import pytest

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

__all__ = [
    "call_worker",
    "clean_faults",
    "lenient_sandbox",
    "sandbox",
    "tapraise_client",
    "temporal_env",
]


def pytest_configure(config: pytest.Config) -> None:
    # A mistyped CALL_TESTS_START stops the run before any test, rather than failing each one.
    try:
        start_instant()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    first = start_instant().astimezone(LOCAL)
    return f"calls start at: {start_kind()} (next: {first:%a %Y-%m-%d %H:%M %Z})"
