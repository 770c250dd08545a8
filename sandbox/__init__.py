"""A local TapRaise: the call endpoints over HTTP with a persistent store.

Run it with ``python -m sandbox``; build the app in-process with :func:`create_app`.
"""

from sandbox.app import create_app, open_sandbox

__all__ = ["create_app", "open_sandbox"]
