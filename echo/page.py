"""The browser console served at ``GET /``: static assets and their Content-Security-Policy.

The page, its script and its style ship in ``echo/page/`` and are read once when the
app is built (under ``make dev``, on every request, so edits show on reload). The
policy admits only this server's own resources; ``connect-src`` admits this server
('self' covers ws:// and wss:// to it) plus, when the page is asked for with
``?url=ws://host:port/``, that one other server, so the console can be pointed
elsewhere without opening the page to every host.

Under ``adev runserver`` the page also admits adev's live-reload script and socket,
at the very origin adev appends to the page (its ``--aux-port``, whatever it is), and
no other: see :class:`LiveReloadPage`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import Payload, hdrs, web
from yarl import URL

from echo.httpecho import expect_continue

ASSETS = {
    "index.html": "text/html",
    "page.js": "text/javascript",
    "page.css": "text/css",
}
_WS_TO_HTTP = {"ws": "http", "wss": "https"}
# CSP host-sources cannot express IPv6 literals; a name or IPv4 address is required.
_CSP_HOST = re.compile(r"^[A-Za-z0-9.-]+$")
# The tag adev's live reload appends to HTML responses (aiohttp-devtools' serve.py).
_LIVE_RELOAD_TAG = re.compile(
    rb'<script src="http://([A-Za-z0-9.-]+:[0-9]{1,5})/livereload\.js"></script>\s*$'
)


@dataclass(frozen=True, slots=True)
class PageOptions:
    """How the page is served: extra policy sources, and whether to re-read the files."""

    script_sources: tuple[str, ...] = ()
    connect_sources: tuple[str, ...] = ()
    reread: bool = False
    live_reload: bool = False  # admit the live-reload origin adev appends (LiveReloadPage)


@dataclass(frozen=True, slots=True)
class Page:
    """The console's files and the policy they are served with."""

    options: PageOptions = PageOptions()
    _cache: dict[str, bytes] = field(default_factory=dict)

    def asset(self, name: str) -> bytes:
        if self.options.reread or name not in self._cache:
            self._cache[name] = (resources.files("echo") / "page" / name).read_bytes()
        return self._cache[name]

    def index(self, request: web.Request) -> web.Response:
        """The HTML page, with a policy that also admits the server named by ``?url=``."""
        target = request.query.get("url")
        if self.options.live_reload:
            return LiveReloadPage(self, target, self._response("index.html", self.policy(target)))
        return self._response("index.html", self.policy(target))

    async def serve_script(self, _request: web.Request) -> web.Response:
        return self._response("page.js")

    async def serve_style(self, _request: web.Request) -> web.Response:
        return self._response("page.css")

    def _response(self, name: str, policy: str | None = None) -> web.Response:
        headers = {
            hdrs.CACHE_CONTROL: "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if policy is not None:
            headers["Content-Security-Policy"] = policy
        return web.Response(
            body=self.asset(name), content_type=ASSETS[name], charset="utf-8", headers=headers
        )

    def policy(self, target: str | None = None, live_reload: str | None = None) -> str:
        """The Content-Security-Policy of the page; ``live_reload`` is adev's ``host:port``."""
        scripts = ["'self'", *self.options.script_sources]
        connect = ["'self'", *_target_sources(target), *self.options.connect_sources]
        if live_reload is not None:
            scripts.append(f"http://{live_reload}")
            connect.append(f"ws://{live_reload}")
        return "; ".join(
            [
                "default-src 'none'",
                f"script-src {' '.join(scripts)}",
                "style-src 'self'",
                "img-src 'self' data:",
                f"connect-src {' '.join(connect)}",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )


def _target_sources(target: str | None) -> list[str]:
    """CSP sources for a ``ws://`` or ``wss://`` URL and its HTTP twin (for /healthz)."""
    if not target:
        return []
    try:
        url = URL(target)
    except ValueError:
        return []
    http_scheme = _WS_TO_HTTP.get(url.scheme)
    host = url.raw_host
    if http_scheme is None or not host or not _CSP_HOST.match(host) or url.port is None:
        return []
    return [f"{url.scheme}://{host}:{url.port}", f"{http_scheme}://{host}:{url.port}"]


class LiveReloadPage(web.Response):
    """The HTML page under ``adev runserver``, whose policy follows adev's live reload.

    adev appends ``<script src="http://HOST:AUX_PORT/livereload.js">`` to HTML responses
    while they are prepared (HOST from the request's Host header, AUX_PORT its
    ``--aux-port``, PORT+1 by default); that script then opens ``ws://HOST:AUX_PORT``.
    Neither is known when the app is built, so the page admits exactly the origin it
    sees appended to its body, and nothing when there is none.
    """

    def __init__(self, page: Page, target: str | None, template: web.Response) -> None:
        self._page, self._target = page, target
        super().__init__(body=template.body, headers=template.headers)

    @property
    def body(self) -> bytes | bytearray | Payload | None:
        return web.Response.body.fget(self)  # type: ignore[attr-defined, no-any-return]

    @body.setter
    def body(self, body: Any) -> None:
        web.Response.body.fset(self, body)  # type: ignore[attr-defined]
        match = _LIVE_RELOAD_TAG.search(body) if isinstance(body, bytes) else None
        if match is not None and hasattr(self, "_page"):
            origin = match[1].decode("ascii")
            self.headers["Content-Security-Policy"] = self._page.policy(self._target, origin)


def development_options() -> PageOptions:
    """For ``adev runserver``: re-read edited files, admit its live reload (LiveReloadPage)."""
    return PageOptions(reread=True, live_reload=True)


PAGE_KEY = web.AppKey("echo_page", Page)


def add_page(app: web.Application, options: PageOptions | None = None) -> Page:
    """Register ``/page.js`` and ``/page.css``; ``GET /`` calls ``app[PAGE_KEY].index``."""
    page = Page(options or PageOptions())
    for name in ASSETS:
        page.asset(name)  # fail at start-up, not on the first request, if a file is missing
    app[PAGE_KEY] = page
    app.router.add_get("/page.js", page.serve_script, expect_handler=expect_continue)
    app.router.add_get("/page.css", page.serve_style, expect_handler=expect_continue)
    return page
