"""``make compliance``: the Autobahn TestSuite against the real server, through kosoku.

Not part of the shipped package; ``python -m compliance`` runs :mod:`compliance.autobahn`.
"""
