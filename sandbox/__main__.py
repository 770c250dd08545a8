"""Command line: ``python -m sandbox``.

By default it serves the TapRaise API and ``/healthz`` only. ``--admin-token-file`` (or
``SANDBOX_ADMIN_TOKEN_FILE``) makes it a development stand-in with the ``/_sandbox/`` routes,
for the holder of the token in that file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from sandbox.app import create_app
from sandbox.guard import ADMIN_TOKEN_ENV, AdminTokenError, read_admin_token


class _Server(uvicorn.Server):
    """A uvicorn server that prints one line once it accepts connections."""

    def __init__(self, config: uvicorn.Config, *, admin: bool) -> None:
        super().__init__(config)
        self.admin = admin

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets)  # type: ignore[arg-type]
        if self.should_exit:
            return
        host, port = self.config.host, self.config.port
        for server in self.servers:
            for sock in server.sockets:
                port = sock.getsockname()[1]
        admin = " (admin routes under /_sandbox/)" if self.admin else ""
        print(f"TapRaise sandbox ready at http://{host}:{port}{admin}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the sandbox until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    parser = argparse.ArgumentParser(
        prog="tapraise-sandbox", description="A local stand-in for the TapRaise API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--data-dir", type=Path, default=Path(".data/sandbox"))
    parser.add_argument("--clock-skew-seconds", type=float, default=300)
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        default=os.environ.get(ADMIN_TOKEN_ENV) or None,
        metavar="PATH",
        help="serve the /_sandbox/ routes (request log, test data, faults, settings, docs) to "
        "requests bearing the token in this file, for development only; default: "
        f"${ADMIN_TOKEN_ENV}, else no /_sandbox/ routes at all",
    )
    args = parser.parse_args(argv)
    admin_token = None
    if args.admin_token_file is not None:
        try:
            admin_token = read_admin_token(Path(args.admin_token_file))
        except AdminTokenError as exc:
            parser.error(str(exc))
    # Whatever it writes (the store, its journal files, the demo key) is its owner's alone.
    os.umask(0o077)
    app = create_app(args.data_dir, args.clock_skew_seconds, admin_token=admin_token)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # Late answers still in flight get a few seconds to finish on shutdown.
        timeout_graceful_shutdown=5,
    )
    # uvicorn's own runner picks the fastest event loop and HTTP parser installed (uvloop,
    # httptools): about a fifth less CPU per request than asyncio with h11.
    _Server(config, admin=admin_token is not None).run()


if __name__ == "__main__":
    main()
