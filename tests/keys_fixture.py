"""The payload encryption key of a test run: every process the tests start reads the same one.

Set before anything connects: `ENCRYPTION_KEYS_FILE` names a key file made for this run (mode
0600, removed at exit), unless the environment already names keys.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from encryption.keys import KEYS_FILE_VARIABLE, KEYS_VARIABLE, KeyRing, ensure_demo_keys, load_keys


def use_run_keys() -> KeyRing:
    """The run's keys: those configured, else a new key file named in the environment."""
    if os.environ.get(KEYS_VARIABLE) or os.environ.get(KEYS_FILE_VARIABLE):
        ring = load_keys()
        assert ring is not None
        return ring
    folder = Path(tempfile.mkdtemp(prefix="tapraise-calls-keys-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "encryption-keys"
    ring = ensure_demo_keys(path)
    os.environ[KEYS_FILE_VARIABLE] = str(path)
    return ring


RUN_KEYS = use_run_keys()
