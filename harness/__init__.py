"""What the tests, the benchmark and the conformance runner share, and nothing else.

One server launcher (:mod:`harness.process`), one free-port helper
(:mod:`harness.ports`) and one RFC 6455 frame encoder (:mod:`harness.frames`). It is a
top-level package beside ``echo/`` rather than part of it, so nothing here ships in the
wheel, and beside ``tests/`` rather than inside it, so ``python -m bench`` and
``python -m compliance`` do not import the test suite. It imports nothing from ``echo``
and uses the standard library only.
"""
