"""The browser console served at ``GET /``: static assets and their Content-Security-Policy.

The page, its script and its style ship in ``echo/page/`` and are read once when the
app is built. The policy admits only this server's own resources; ``connect-src``
admits this server ('self' covers ws:// and wss:// to it) plus, when the page is asked
for with ``?url=ws://host:port/``, that one other server, so the console can be
pointed elsewhere without opening the page to every host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import hdrs, web
from yarl import URL

_WS_TO_HTTP = {"ws": "http", "wss": "https"}
# CSP host-sources cannot express IPv6 literals; a name or IPv4 address is required.
_CSP_HOST = re.compile(r"^[A-Za-z0-9.-]+$")


@dataclass(frozen=True, slots=True)
class Page:
    """The console's files and the extra sources a development server needs."""

    html: bytes
    script: bytes
    style: bytes
    dev_sources: tuple[str, ...] = ()

    @classmethod
    def load(cls, dev_sources: tuple[str, ...] = ()) -> Page:
        folder = resources.files("echo") / "page"
        return cls(
            html=(folder / "index.html").read_bytes(),
            script=(folder / "page.js").read_bytes(),
            style=(folder / "page.css").read_bytes(),
            dev_sources=dev_sources,
        )

    def index(self, request: web.Request) -> web.Response:
        """The HTML page, with a policy that also admits the server named by ``?url=``."""
        return web.Response(
            body=self.html,
            content_type="text/html",
            charset="utf-8",
            headers=_headers(self.policy(request.query.get("url"))),
        )

    async def serve_script(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.script, content_type="text/javascript", charset="utf-8", headers=_headers()
        )

    async def serve_style(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.style, content_type="text/css", charset="utf-8", headers=_headers()
        )

    def policy(self, target: str | None = None) -> str:
        """The Content-Security-Policy of the page."""
        connect = ["'self'", *_target_sources(target), *self.dev_sources]
        scripts = ["'self'", *self.dev_sources]
        return "; ".join(
            [
                "default-src 'none'",
                f"script-src {' '.join(scripts)}",
                "style-src 'self'",
                "img-src 'self'",
                f"connect-src {' '.join(connect)}",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )


def _headers(policy: str | None = None) -> dict[str, str]:
    headers = {
        hdrs.CACHE_CONTROL: "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if policy is not None:
        headers["Content-Security-Policy"] = policy
    return headers


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


def live_reload_sources(aux_port: int) -> tuple[str, ...]:
    """What aiohttp-devtools' live reload needs: its script and WebSocket on ``aux_port``."""
    return (f"http://*:{aux_port}", f"ws://*:{aux_port}")


PAGE_KEY = web.AppKey("echo_page", Page)


def add_page(app: web.Application, dev_sources: tuple[str, ...] = ()) -> Page:
    """Load the page, register ``/page.js`` and ``/page.css``; ``GET /`` calls ``index``."""
    page = Page.load(dev_sources)
    app[PAGE_KEY] = page
    app.router.add_get("/page.js", page.serve_script)
    app.router.add_get("/page.css", page.serve_style)
    return page
