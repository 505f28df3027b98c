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
