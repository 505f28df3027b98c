"""The fast engine: echoes from inside aiohttp's frame parser, detached connections,
one shared heartbeat timer.

This sub-package is the ONLY code in echo allowed to import or touch aiohttp's or
gunicorn's internals (underscore names, private modules such as ``aiohttp._websocket``,
overrides of private methods). Everything outside it uses public API only.

It tracks aiohttp 3.14.5 (``_websocket.reader`` and ``writer``,
``web_protocol.RequestHandler``, ``web_ws.WebSocketResponse._post_start`` and its
heartbeat methods, ``web_server.Server``): a change to any of those may only be made
together with a change here, after ``tests/test_engine_contract.py`` and the whole
suite pass on the new release (then it goes into TESTED_AIOHTTP). It touches nothing of
gunicorn's (echo.workers runs on gunicorn's worker interface for either engine).
:func:`unavailable` is what echo.engine.choose asks before taking it.

- ``engine``: FastEngine (accept, the plain path for what it does not serve) and
  FastLink (the queue served in a short-lived task);
- ``fastpath``: EchoResponse and EchoQueue, the echo from the parser's callback;
- ``runner``: the runner, server and connection protocol (detaching, TCP_NODELAY from
  the listener);
- ``heartbeat``: one timer per process pinging silent connections;
- ``checks``: the start-up self-checks (the private names are all there).
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
