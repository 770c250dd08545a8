"""Fixtures shared by every test module."""

from tests.sandbox_fixture import clean_faults, sandbox
from tests.temporal_fixture import call_worker, lenient_sandbox, tapraise_client, temporal_env

__all__ = [
    "call_worker",
    "clean_faults",
    "lenient_sandbox",
    "sandbox",
    "tapraise_client",
    "temporal_env",
]
