"""``python -m echo.client``: the same as ``echo-client``."""

from echo.client.cli import main

main()
