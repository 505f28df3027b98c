"""The fast engine: echoes from inside aiohttp's frame parser, detached connections,
one shared heartbeat timer, the unmasked-frame check, and the listening-site copies.

This sub-package is the ONLY code in echo allowed to import or touch aiohttp's or
gunicorn's internals (underscore names, private modules such as ``aiohttp._websocket``,
overrides of private methods). Everything outside it uses public API only.

It tracks aiohttp 3.14.5 (``_websocket.reader``, ``web_protocol.RequestHandler``,
``web_ws.WebSocketResponse._post_start``, ``web_runner`` sites) and gunicorn 27: a
change to any of those may only be made together with a change here.

- ``fastpath``: EchoResponse and EchoQueue, the echo from the parser's callback;
- ``runner``: the runner, server and connection protocol (detaching, TCP_NODELAY from
  the listener, handshake timeouts counted);
- ``heartbeat``: one timer per process pinging silent connections;
- ``masking``: RFC 6455 5.1, fail the connection on an unmasked client frame;
- ``sites``: aiohttp's TCPSite and SockSite with the TLS handshake bounded.
"""

from __future__ import annotations

from importlib import metadata

# The aiohttp releases the fast engine's tests (make test, tests/test_engine_contract.py)
# pass on. Add one only after running them there.
TESTED_AIOHTTP = ("3.14.5",)


def unavailable() -> str | None:
    """Why the fast engine must not run here, in a few words; None if it may.

    Cheap: the installed aiohttp is one of TESTED_AIOHTTP, the fast engine's modules
    import, and aiohttp still has the private names they use (echo.engine.fast.checks).
    """
    version = metadata.version("aiohttp")
    if version not in TESTED_AIOHTTP:
        tested = ", ".join(TESTED_AIOHTTP)
        return f"aiohttp {version} is not a release it is tested against ({tested})"
    try:
        from echo.engine.fast.checks import missing
    except (ImportError, AttributeError) as error:
        return f"it does not load on aiohttp {version} ({error})"
    problem = missing()
    return None if problem is None else f"aiohttp {version} lacks {problem}"
