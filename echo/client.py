"""The reconnecting echo client: sends messages, checks their echoes, loses nothing.

``EchoClient(settings).run()`` is the library entry point; ``main()`` is the
``echo-client`` console script (also ``python -m echo.client``), which reads the
settings from the environment, ``.env`` and its flags, stops on SIGINT or SIGTERM and
prints the summary line.

One :class:`aiohttp.ClientSession` serves every connection of the client's life. On
each connection the unanswered messages of the previous one are sent again first, then
a new message every MESSAGE_INTERVAL; nothing is produced while disconnected. Any loss
(server gone, close frame, network error, missed heartbeat pongs) leads to a reconnect
after an exponential back-off with jitter; HTTP 429 and 503 are retried no sooner than
their Retry-After; HTTP 403 ends the client with :class:`OriginRefused` and a TLS
certificate that fails verification with :class:`CertificateUntrusted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import ssl
import sys
import time
from typing import Literal

import aiohttp
from aiohttp import WSMsgType, hdrs

from echo.backoff import Backoff, parse_retry_after
from echo.cli import command_line
from echo.config import (
    CLIENT_VARIABLES,
    ClientSettings,
    ConfigError,
    env_file_warnings,
    load_environment,
)
from echo.eventloop import loop_factory
from echo.logs import configure_logging, event
from echo.payloads import Payloads
from echo.text import preview
from echo.tls import client_context
from echo.tracker import EchoTracker, Kind, Match, Stats

log = logging.getLogger("echo.client")

DRAIN_TIMEOUT = 5.0  # on stop, how long to wait for the echoes of messages in flight
CLOSE_TIMEOUT = 5.0  # how long to wait for the server's close frame after ours
HURRIED_CLOSE_TIMEOUT = 0.25  # the same after a second signal
TRANSPORT_CLOSE_TIMEOUT = 1.0  # for the TLS shutdown after the closing handshake
MAX_IN_FLIGHT = 100  # messages sent and not yet echoed; at the limit, production pauses
MAX_IN_FLIGHT_BYTES = 64 << 20
MIN_RECEIVE_LIMIT = 64 << 10

WebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]

_OPCODES = {Kind.TEXT: WSMsgType.TEXT, Kind.BINARY: WSMsgType.BINARY}
_KINDS = {WSMsgType.TEXT: Kind.TEXT, WSMsgType.BINARY: Kind.BINARY}


class OriginRefused(Exception):
    """The server answered the handshake with 403: retrying with this Origin cannot help."""

    def __init__(self, origin: str, url: str) -> None:
        self.origin = origin
        self.url = url
        super().__init__(
            f"the server at {preview(url)} refused the origin {preview(origin)} (HTTP 403); "
            "set ORIGIN or --origin to an origin it allows"
        )


class CertificateUntrusted(Exception):
    """The server's TLS certificate failed verification: retrying cannot make it trusted."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot trust the TLS certificate of {preview(url)}: {preview(reason)}; "
            "set TLS_CA_FILE to the CA that signed it"
        )


class EchoClient:
    """Keeps a WebSocket to ``settings.url`` open, sending messages and checking echoes.

    ``run()`` returns the :class:`Stats` when the client has stopped: after
    :meth:`stop`, or once ``message_count`` messages have been answered. ``stats`` can
    be read at any time.
    """

    def __init__(self, settings: ClientSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.stats = Stats()
        self._tracker = EchoTracker(self.stats)
        self._payloads = Payloads(settings.size, settings.binary, rng)
        self._backoff = Backoff(settings.reconnect_interval, settings.reconnect_max_interval, rng)
        self._window = max(1, min(MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES // self._payloads.largest))
        self._stopping = False
        self._hurry = False  # a hard stop: do not wait long for the server's close frame
        self._stop_requested = asyncio.Event()  # no new messages, no new connections
        self._finished = asyncio.Event()  # close now: all answered, drain over, or hard stop
        self._drain_timer: asyncio.TimerHandle | None = None
        self._running = False
        self.connected = False
        self._ssl: ssl.SSLContext | bool = (
            client_context(settings.ca_file) if settings.url.startswith("wss:") else True
        )

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def unanswered(self) -> int:
        """Messages sent and not yet echoed (sent again after a reconnect)."""
        return len(self._tracker.pending)

    def stop(self, *, drain: bool = True) -> None:
        """Stop producing and reconnecting; close once the messages in flight are answered.

        With ``drain`` (the first SIGINT/SIGTERM) the client waits up to DRAIN_TIMEOUT
        for the echoes of messages already sent, if it is connected; without it (a
        second signal) it closes at once.
        """
        if not self._stopping:
            self._stopping = True
            self._stop_requested.set()
            if drain and self._running:
                loop = asyncio.get_running_loop()
                self._drain_timer = loop.call_later(DRAIN_TIMEOUT, self._finished.set)
        if not drain:
            self._hurry = True
            self._finished.set()
        self._check_finished()

    def _production_over(self) -> bool:
        count = self.settings.message_count
        return self._stopping or (count > 0 and self.stats.sent >= count)

    def _check_finished(self) -> None:
        if self._production_over() and not self._tracker.pending:
            self._finished.set()

    # -- the connection loop ----------------------------------------------------------

    async def run(self) -> Stats:
        """Connect, echo and reconnect until stopped; raise OriginRefused on HTTP 403."""
        if self._running:
            raise RuntimeError("EchoClient.run() is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        settings = self.settings
        log.info(
            "client for %s origin=%s: a %s message every %g ms%s",
            settings.url,
            settings.origin,
            self._payloads.kind.value,
            settings.message_interval * 1000,
            f", {settings.message_count} in all" if settings.message_count else "",
            extra=event(
                "start",
                url=settings.url,
                origin=settings.origin,
                kind=self._payloads.kind.value,
                interval=settings.message_interval,
                count=settings.message_count,
            ),
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.heartbeat_interval)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not (self._stopping or self._finished.is_set()):
                    ws, retry_after = await self._connect(session)
                    if ws is not None:
                        opened = loop.time()
                        reason = await self._converse(ws)
                        if loop.time() - opened >= settings.healthy_after:
                            self._backoff.reset()
                        if self._stopping or self._finished.is_set():
                            break
                        log.warning(
                            "connection lost: %s", reason, extra=event("lost", reason=reason)
                        )
                    elif self._stopping:
                        break
                    delay = self._backoff.next_delay()
                    if retry_after is not None:
                        delay = max(delay, self._backoff.spread(retry_after))
                    log.info(
                        "reconnecting in %.3f s",
                        delay,
                        extra=event("backoff", delay=round(delay, 3)),
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_requested.wait(), delay)
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None
            self._running = False
        return self.stats

    async def _connect(
        self, session: aiohttp.ClientSession
    ) -> tuple[WebSocket | None, float | None]:
        """One handshake, given up if stop() is called meanwhile.

        Returns the WebSocket, or None and the Retry-After in seconds if there was one.
        """
        settings = self.settings
        attempt = asyncio.ensure_future(self._handshake(session))
        stop_waiter = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({attempt, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (attempt, stop_waiter):
                task.cancel()
            await asyncio.gather(attempt, stop_waiter, return_exceptions=True)
        if attempt.cancelled():
            return None, None
        error = attempt.exception()
        if error is None:
            return attempt.result(), None
        if isinstance(error, aiohttp.WSServerHandshakeError):
            if error.status == 403:
                raise OriginRefused(settings.origin, settings.url)
            if error.status in (429, 503):
                self.stats.refusals += 1
                headers = error.headers
                retry_after = parse_retry_after(
                    headers.get(hdrs.RETRY_AFTER) if headers is not None else None
                )
                log.info(
                    "server busy (HTTP %d), Retry-After=%s",
                    error.status,
                    retry_after,
                    extra=event("busy", status=error.status, retry_after=retry_after),
                )
                return None, retry_after
            log.warning(
                "handshake refused: HTTP %d %s",
                error.status,
                preview(error.message),
                extra=event("refused", status=error.status, reason=preview(error.message)),
            )
            return None, None
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            raise CertificateUntrusted(settings.url, _certificate_reason(error))
        if isinstance(error, TimeoutError):
            log.info(
                "cannot connect: no handshake within %g s",
                settings.heartbeat_interval,
                extra=event("connect_failed", reason="handshake timeout"),
            )
            return None, None
        if isinstance(error, aiohttp.ClientError | OSError):
            reason = preview(str(error) or type(error).__name__)
            log.info("cannot connect: %s", reason, extra=event("connect_failed", reason=reason))
            return None, None
        raise error

    async def _handshake(self, session: aiohttp.ClientSession) -> WebSocket:
        """Open a WebSocket, bounded in time by the heartbeat interval."""
        settings = self.settings
        async with asyncio.timeout(settings.heartbeat_interval):
            return await session.ws_connect(
                settings.url,
                origin=settings.origin,
                ssl=self._ssl,
                heartbeat=settings.heartbeat_interval,
                autoping=True,
                max_msg_size=max(self._payloads.largest, MIN_RECEIVE_LIMIT) + 1,
                decode_text=False,
                # Waiting for the server's close frame: no longer than we trust silence.
                timeout=aiohttp.ClientWSTimeout(
                    ws_close=min(CLOSE_TIMEOUT, settings.heartbeat_interval)
                ),
            )

    async def _converse(self, ws: WebSocket) -> str:
        """Run one connection until it is lost or the client is finished; say why it ended."""
        self.stats.connections += 1
        if self.stats.connections > 1:
            self.stats.reconnects += 1
        self.connected = True
        log.info(
            "connected to %s (connection %d, %d message(s) to send again)",
            self.settings.url,
            self.stats.connections,
            len(self._tracker.pending),
            extra=event(
                "connected",
                url=self.settings.url,
                connection=self.stats.connections,
                resend=len(self._tracker.pending),
            ),
        )
        transport = _Transport.of(ws)
        sender = asyncio.create_task(self._send(ws), name="echo-client-send")
        receiver = asyncio.create_task(self._receive(ws), name="echo-client-receive")
        finished = asyncio.create_task(self._finished.wait(), name="echo-client-finished")
        try:
            waiting = {sender, receiver, finished}
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done or finished in done:
                    break
                if sender.exception() is not None:
                    break  # a bug, raised below
        finally:
            self.connected = False
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if not ws.closed:
                # aiohttp gives up and drops the connection if the wait is cut short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        ws.close(code=aiohttp.WSCloseCode.OK),
                        HURRIED_CLOSE_TIMEOUT if self._hurry else None,
                    )
            if transport is not None:
                await transport.wait_closed(
                    HURRIED_CLOSE_TIMEOUT if self._hurry else TRANSPORT_CLOSE_TIMEOUT
                )
            for task in (receiver, finished):
                task.cancel()
            results = await asyncio.gather(sender, receiver, finished, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result
        reason = results[1]
        return reason if isinstance(reason, str) else "closed by the client"

    async def _send(self, ws: WebSocket) -> None:
        """Send the unanswered messages again, then a new one every MESSAGE_INTERVAL."""
        loop = asyncio.get_running_loop()
        tracker = self._tracker
        try:
            for message in tracker.to_resend():
                tracker.resending(message, time.perf_counter())
                await ws.send_frame(message.payload, _OPCODES[message.kind])
            interval = self.settings.message_interval
            next_at = loop.time()
            while not self._production_over():
                if len(tracker.pending) < self._window:
                    payload = self._payloads.make()
                    message = tracker.produce(self._payloads.kind, payload, time.perf_counter())
                    await ws.send_frame(payload, _OPCODES[message.kind])
                else:
                    log.debug("%d messages unanswered: not sending", len(tracker.pending))
                next_at = max(next_at + interval, loop.time())
                await asyncio.sleep(next_at - loop.time())
        except (ConnectionError, aiohttp.ClientError) as error:
            # The receiver notices the loss too; unsent messages stay pending.
            log.debug("send failed: %s", preview(str(error)))

    async def _receive(self, ws: WebSocket) -> str:
        """Check every echo until the connection ends; say why it ended."""
        while True:
            msg = await ws.receive()
            kind = _KINDS.get(msg.type)
            if kind is not None:
                self._on_echo(kind, msg.data)
                continue
            if msg.type is WSMsgType.CLOSE:
                return f"server closed with {msg.data} {preview(msg.extra or '')}"
            if msg.type is WSMsgType.ERROR:
                error = msg.data
                if isinstance(error, aiohttp.ServerTimeoutError):
                    return f"heartbeat: {preview(str(error))}"
                return f"error: {preview(str(error) or type(error).__name__)}"
            return "connection dropped" if msg.type is WSMsgType.CLOSED else "closing"

    def _on_echo(self, kind: Kind, data: bytes) -> None:
        result = self._tracker.receive(kind, data, time.perf_counter())
        message = result.message
        if result.match is Match.ECHOED and message is not None and result.rtt is not None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "echo seq=%d %s %dB rtt=%.3fms",
                    message.seq,
                    kind.value,
                    len(data),
                    result.rtt * 1000,
                    extra=event(
                        "echo",
                        seq=message.seq,
                        kind=kind.value,
                        size=len(data),
                        rtt_ms=round(result.rtt * 1000, 3),
                    ),
                )
            else:
                log.info(
                    "echo seq=%d %s %dB",
                    message.seq,
                    kind.value,
                    len(data),
                    extra=event("echo", seq=message.seq, kind=kind.value, size=len(data)),
                )
        elif result.match is Match.MISMATCHED and message is not None:
            log.warning(
                "mismatch seq=%d: sent %s %s, got %s %s",
                message.seq,
                message.kind.value,
                preview(message.payload, 60),
                kind.value,
                preview(data, 60),
                extra=event(
                    "mismatch",
                    seq=message.seq,
                    sent_kind=message.kind.value,
                    sent_size=len(message.payload),
                    kind=kind.value,
                    size=len(data),
                ),
            )
        else:
            log.warning(
                "unexpected %s message %s",
                kind.value,
                preview(data, 60),
                extra=event("unexpected", kind=kind.value, size=len(data)),
            )
        self._check_finished()


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class _Transport:
    """The transport under a WebSocket, to see it really closed before moving on.

    aiohttp closes a connection's transport and forgets it (aiohttp issue #1925). A TLS
    transport then still exchanges close_notify with the server; if the event loop ends
    first, the socket is leaked (ResourceWarning at exit). ``wait_closed`` waits for
    the end of that exchange, bounded, and aborts the transport if it takes too long.
    aiohttp offers no public way to reach the transport of a WebSocket, hence the
    private attribute; without it, nothing is waited for.
    """

    def __init__(self, protocol: aiohttp.client_proto.ResponseHandler) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.closed = protocol.closed  # created now, so connection_lost will resolve it
        if self.closed is not None:
            # A connection lost with an error sets it; that is no news to anyone here.
            self.closed.add_done_callback(_consume)

    @classmethod
    def of(cls, ws: WebSocket) -> _Transport | None:
        response = getattr(ws, "_response", None)
        connection = getattr(response, "connection", None)
        protocol = getattr(connection, "protocol", None)
        if isinstance(protocol, aiohttp.client_proto.ResponseHandler):
            return cls(protocol)
        return None

    async def wait_closed(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for connection_lost; then abort the transport."""
        if self.closed is None:
            return  # connection_lost came already
        done, _ = await asyncio.wait({self.closed}, timeout=grace)
        if not done and self.transport is not None:
            self.transport.abort()


def _certificate_reason(error: aiohttp.ClientConnectorCertificateError) -> str:
    """What verification said: 'certificate verify failed: unable to get local issuer...'."""
    cause = error.certificate_error
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
        return f"certificate verify failed: {cause.verify_message}"
    return str(cause) or type(cause).__name__


# -- command line ---------------------------------------------------------------------


def parse_flags(argv: list[str] | None) -> dict[str, str]:
    """The given flags as raw strings keyed by flag name, for ClientSettings.from_env."""
    parser = command_line(
        "echo-client",
        "Reconnecting WebSocket echo client. Configured by environment variables, also "
        "read from a .env file in the working directory (the environment wins), "
        "overridden by these flags. Durations are in milliseconds.",
        CLIENT_VARIABLES,
        check_config=False,
    )
    parser.add_argument("--url", help="server URL, ws:// or wss:// (WS_URL)")
    parser.add_argument("--interval", metavar="MS", help="time between messages (MESSAGE_INTERVAL)")
    parser.add_argument(
        "--count", metavar="N", help="stop after N messages were echoed, 0 = never (MESSAGE_COUNT)"
    )
    parser.add_argument("--origin", help="Origin header to send (ORIGIN)")
    parser.add_argument("--size", metavar="N", help="send N-byte payloads, not random numbers")
    parser.add_argument("--binary", action="store_true", help="send binary frames, not text")
    args = parser.parse_args(argv)
    flags = {
        f"--{name}": value
        for name, value in vars(args).items()
        if name != "binary" and value is not None
    }
    if args.binary:
        flags["--binary"] = "true"
    return flags


async def run_until_signal(client: EchoClient) -> Stats:
    """``client.run()``, stopped gently by the first SIGINT/SIGTERM and at once by a second."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if client.stopping:
            log.info("second signal: closing now")
        else:
            log.info("signal received: stopping")
        client.stop(drain=not client.stopping)

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        return await client.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> None:
    """Console script ``echo-client``: exit 0 after a stop, 1 on HTTP 403 or an untrusted
    certificate, 2 on bad settings."""
    flags = parse_flags(argv)
    for warning in env_file_warnings():
        print(f"echo-client: warning: {warning}", file=sys.stderr)
    try:
        settings = ClientSettings.from_env(load_environment(), flags)
    except ConfigError as error:
        print(f"echo-client: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)
    client = EchoClient(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            stats = runner.run(run_until_signal(client))
    except (OriginRefused, CertificateUntrusted) as error:
        print(f"echo-client: {error}", file=sys.stderr)
        sys.exit(1)
    print(stats.summary(), flush=True)


if __name__ == "__main__":
    main()
