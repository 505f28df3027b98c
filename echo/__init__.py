"""echo: a secure WebSocket echo server and a reconnecting echo client on aiohttp."""

__version__ = "0.1.0"
