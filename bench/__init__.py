"""``make bench``: the echo server against a bare aiohttp echo, side by side.

Not part of the shipped package. ``run`` is the runner and report (``python -m bench``),
``client`` the load generator, ``reference`` the bare aiohttp echo it compares with.
Servers are started with ``harness.process.ServerProcess``, like the tests' servers.
"""
