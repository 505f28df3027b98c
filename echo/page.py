"""The browser console served at ``GET /``: static assets and their Content-Security-Policy.

The page, its script and its style ship in ``echo/page/`` and are read once when the
app is built (under ``make dev``, on every request, so edits show on reload). The
policy admits only this server's own resources; ``connect-src`` admits this server
('self' covers ws:// and wss:// to it) plus, when the page is asked for with
``?url=ws://host:port/``, that one other server, so the console can be pointed
elsewhere without opening the page to every host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import hdrs, web
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


@dataclass(frozen=True, slots=True)
class PageOptions:
    """How the page is served: extra policy sources, and whether to re-read the files."""

    script_sources: tuple[str, ...] = ()
    connect_sources: tuple[str, ...] = ()
    reread: bool = False


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
        return self._response("index.html", self.policy(request.query.get("url")))

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

    def policy(self, target: str | None = None) -> str:
        """The Content-Security-Policy of the page."""
        scripts = ["'self'", *self.options.script_sources]
        connect = ["'self'", *_target_sources(target), *self.options.connect_sources]
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


def development_options(aux_port: int) -> PageOptions:
    """For ``adev runserver``: re-read edited files, admit its live-reload script and socket.

    adev serves both on ``aux_port`` under the host name the browser used, hence ``*``.
    """
    return PageOptions(
        script_sources=(f"http://*:{aux_port}",),
        connect_sources=(f"ws://*:{aux_port}",),
        reread=True,
    )


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
