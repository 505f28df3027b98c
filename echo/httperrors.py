"""Answers to requests aiohttp's HTTP parser refuses, without quoting the request.

aiohttp answers a malformed request (a control byte in a header, an over-long line, a
bad chunk size...) with 400 and the parser's error message as the body, and that
message quotes the offending line: an ``Authorization`` header's credentials
included, reflected to whoever sent it and to every proxy and log on the way back.
:class:`ErrorPages` keeps the status and says what was wrong in fixed words.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (BadHttpMethod, "invalid method"),
    (LineTooLong, "a line of the request is too long"),
    (InvalidHeader, "invalid header"),
    (InvalidURLError, "invalid request target"),
    (BadStatusLine, "invalid request line"),
    (TransferEncodingError, "invalid chunked body"),
    (ContentEncodingError, "unsupported Content-Encoding"),
    (ContentLengthError, "body shorter than its Content-Length"),
)


def error_text(status: int, exc: BaseException | None) -> str:
    """The body of an error answer: the status and a fixed hint, nothing from the request."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    hint = next((hint for kind, hint in _HINTS if isinstance(exc, kind)), "malformed request")
    return f"{status} {phrase}: {hint}\n"


class ErrorPages(web.RequestHandler):
    """aiohttp's connection protocol, whose error answers quote nothing of the request.

    ``handle_error`` is aiohttp's public hook for them; for 500 aiohttp writes its own
    fixed text already, so only the other statuses change.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != HTTPStatus.INTERNAL_SERVER_ERROR:
            message = error_text(status, exc)
        return super().handle_error(request, status, exc, message)
