"""``python -m compliance``: see :mod:`compliance.autobahn`."""

from compliance.autobahn import main

main()
