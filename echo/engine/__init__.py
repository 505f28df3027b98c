"""The engines that move WebSocket frames for the server, behind one seam.

The application (admission, echo policy, counting, logging, shutdown) lives in
echo.server; how frames are read and written is an engine's job:

- ``echo.engine.fast``: the fast path on aiohttp 3.14's internals; the only code
  allowed to import or touch aiohttp's or gunicorn's private names.
"""
