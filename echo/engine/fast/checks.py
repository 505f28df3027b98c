"""The start-up self-checks of the fast engine: aiohttp's private names it uses exist.

Cheap (attribute look-ups, no connection); run once by ``echo.engine.fast.unavailable``
before the fast engine is chosen. The behaviour behind each name is asserted by
tests/test_engine_contract.py, which an aiohttp upgrade must pass first.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp._websocket import reader, writer
from aiohttp.base_protocol import BaseProtocol
from aiohttp.web_protocol import RequestHandler

# (object, attribute) pairs: a name the fast engine reads, calls or overrides.
_NEEDED: tuple[tuple[object, str], ...] = (
    (web.WebSocketResponse, "_post_start"),
    (web.WebSocketResponse, "_prepare_headers"),
    (web.WebSocketResponse, "_start"),
    (web.WebSocketResponse, "_send_heartbeat"),
    (web.WebSocketResponse, "_pong_not_received"),
    (web.WebSocketResponse, "_set_closing"),
    (web.WebSocketResponse, "_set_closed"),
    (web.WebSocketResponse, "_close_transport"),
    (web.WebSocketResponse, "_pong_response_cb"),
    (web.WebSocketResponse, "_closing"),
    (web.WebSocketResponse, "_waiting"),
    (reader.WebSocketDataQueue, "feed_data"),
    (reader.WebSocketDataQueue, "_buffer"),
    (reader, "WebSocketReader"),
    (writer.WebSocketWriter, "_write_websocket_frame"),
    (RequestHandler, "_force_close"),
    (RequestHandler, "_messages"),
    (RequestHandler, "_task_handler"),
    (RequestHandler, "_payload_parser"),
    (RequestHandler, "_manager"),
    (BaseProtocol, "_paused"),
    (BaseProtocol, "_parser"),
    (web.Server, "__call__"),
    (web.AppRunner, "_make_server"),
)


def missing() -> str | None:
    """The first private name that is gone, as ``Class.name``; None if all are there."""
    for owner, name in _NEEDED:
        if not hasattr(owner, name):
            return f"{getattr(owner, '__name__', owner)}.{name}"
    return None
