"""The sandbox's front page at ``/`` (and ``/_sandbox/`` with the admin routes): what it serves.

A browser (a request that accepts ``text/html``) gets a small HTML page with links; anything
else gets the same list as JSON. Only what the running sandbox serves is listed: without an
admin token, the TapRaise API and the health check.
"""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

TITLE: Final = "TapRaise sandbox"
INDEX_PATH: Final = "/"
ADMIN_INDEX_PATHS: Final = ("/_sandbox", "/_sandbox/")


@dataclass(frozen=True)
class Page:
    """One route of the sandbox worth knowing, as the index lists it."""

    method: str
    path: str
    description: str
    # One of the /_sandbox/ routes: served only with an admin token, and only to its holder.
    admin: bool = True

    @property
    def linkable(self) -> bool:
        """A page a browser can open as it is: a GET without a path parameter or a token."""
        return self.method == "GET" and "{" not in self.path and not self.admin


PAGES: Final[tuple[Page, ...]] = (
    Page("GET", "/healthz", "health check", admin=False),
    Page("GET", "/_sandbox/docs", "OpenAPI docs: the TapRaise API and every /_sandbox/ route"),
    Page("GET", "/_sandbox/openapi.json", "the OpenAPI schema"),
    Page("GET", "/_sandbox/stats", "totals: calls by status, requests, faults, effects"),
    Page("GET", "/_sandbox/requests", "the request log (?callUuid=, ?endpoint=, ?limit=)"),
    Page("GET", "/_sandbox/calls/{call_uuid}", "one call as stored"),
    Page("GET", "/_sandbox/calls/{call_uuid}/effects", "the changes applied to one call"),
    Page(
        "GET", "/_sandbox/marks", "entities marked processed, by whom (?entityName=, ?entityUuid=)"
    ),
    Page("GET", "/_sandbox/organizations/{org_uuid}", "one organization"),
    Page("PUT", "/_sandbox/organizations/{org_uuid}", "change its name or maxCallAttempts"),
    Page("POST", "/_sandbox/organizations", "add an organization"),
    Page("POST", "/_sandbox/persons", "add a person"),
    Page("POST", "/_sandbox/app/calls", "request a call as a user of the TapRaise app"),
    *(
        Page("PUT", f"/_sandbox/app/calls/{{call_uuid}}/{action}", f"{action} a call in the app")
        for action in ("add-attempt", "complete", "cancel", "expire")
    ),
    Page("POST", "/_sandbox/service-accounts", "add a service account (answers its key)"),
    Page("GET", "/_sandbox/settings", "clock skew, result codes, credential outage"),
    Page("PUT", "/_sandbox/settings", "change them"),
    Page("GET", "/_sandbox/faults", "the faults injected into API requests"),
    Page("PUT", "/_sandbox/faults", "inject faults"),
    Page("DELETE", "/_sandbox/faults", "stop injecting faults"),
    Page(
        "GET", "/api/v1/calls", "the TapRaise API (a service account's bearer token)", admin=False
    ),
)
"""Every page the index can list, in its order."""


def pages(admin: bool) -> tuple[Page, ...]:
    """The pages a sandbox serves: with ``admin``, the ``/_sandbox/`` routes too."""
    return tuple(page for page in PAGES if admin or not page.admin)


def wants_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for HTML (a browser's does; curl's ``*/*`` does not)."""
    for media_range in (accept or "").split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind.lower() != "text/html":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def index_json(admin: bool) -> dict[str, Any]:
    """The index as JSON: the title and every page served (method, path, description, admin)."""
    return {"title": TITLE, "pages": [asdict(page) for page in pages(admin)]}


def index_html(admin: bool) -> str:
    """The index as a small HTML page: a table of the pages served, the plain GETs linked."""
    rows = []
    for page in pages(admin):
        path = html.escape(page.path)
        shown = f'<a href="{path}">{path}</a>' if page.linkable else f"<code>{path}</code>"
        rows.append(
            f"<tr><td>{page.method}</td><td>{shown}</td>"
            f"<td>{html.escape(page.description)}</td></tr>"
        )
    body = "\n".join(rows)
    note = (
        "The <code>/_sandbox/</code> routes need the admin token: "
        "<code>Authorization: Bearer &lt;token&gt;</code>."
        if admin
        else "It serves the TapRaise API and a health check."
    )
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>'
        "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em 1em .2em 0}</style>"
        f"</head><body><h1>{TITLE}</h1>"
        f"<p>A local stand-in for the TapRaise API. {note}</p>\n"
        f"<table>\n<tr><th>method</th><th>path</th><th>what</th></tr>\n{body}\n</table>"
        "</body></html>\n"
    )


def add_index_routes(app: FastAPI, admin: bool) -> None:
    """Answer the index at ``/`` and, with ``admin``, at ``/_sandbox`` and ``/_sandbox/`` (left
    out of the schema)."""

    async def index(request: Request) -> Response:
        if wants_html(request.headers.get("accept")):
            return HTMLResponse(index_html(admin))
        return JSONResponse(index_json(admin))

    for path in (INDEX_PATH, *ADMIN_INDEX_PATHS) if admin else (INDEX_PATH,):
        app.add_api_route(path, index, methods=["GET"], include_in_schema=False)
