"""The one place that reaches into imapclient/imaplib internals: how the socket is made.

imapclient cannot bind a source address (tests need 127.0.0.2 to dodge Dovecot's per-IP
authentication penalty; multi-homed workers may need it too), so ``_create_IMAP4`` is overridden
with imaplib subclasses whose ``_create_socket`` passes ``source_address``.

imapclient also turns imaplib's protocol trace on (``debug = 5``) and sends it to the
``imapclient.imaplib`` logger: with DEBUG logging every FETCH response, subjects and bodies
included, would be written to the log. The trace is switched off here so message content cannot
reach logs whatever the logging configuration.
"""

from __future__ import annotations

import imaplib
import socket
import ssl

from imapclient import IMAPClient, SocketTimeout
from imapclient.tls import IMAP4_TLS

SourceAddress = tuple[str, int]


class _PlainIMAP4(imaplib.IMAP4):
    def __init__(
        self, host: str, port: int, timeout: float | None, source_address: SourceAddress | None
    ) -> None:
        self._source_address = source_address
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=self._source_address
        )


class _TlsIMAP4(IMAP4_TLS):
    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        timeout: float | None,
        source_address: SourceAddress | None,
    ) -> None:
        self._source_address = source_address
        super().__init__(host, port, ssl_context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port),
            timeout if timeout is not None else self._timeout,
            source_address=self._source_address,
        )
        try:
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class ConnectingIMAPClient(IMAPClient):
    """IMAPClient with ``source_address`` and without the protocol trace."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        implicit_tls: bool,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        read_timeout: float,
        source_address: SourceAddress | None = None,
    ) -> None:
        # read by _create_IMAP4, which IMAPClient.__init__ calls
        self._source_address = source_address
        super().__init__(
            host,
            port=port,
            ssl=implicit_tls,
            ssl_context=ssl_context,
            timeout=SocketTimeout(connect=connect_timeout, read=read_timeout),
        )
        self._imap.debug = 0  # no protocol trace: it would log message content
        # aware datetimes (INTERNALDATE) instead of naive local time
        self.normalise_times = False

    def _create_IMAP4(self) -> imaplib.IMAP4:
        connect_timeout = self._timeout.connect
        if self.ssl:
            return _TlsIMAP4(
                self.host, self.port, self.ssl_context, connect_timeout, self._source_address
            )
        return _PlainIMAP4(self.host, self.port, connect_timeout, self._source_address)

    def peer_address(self) -> str:
        return str(self.socket().getpeername()[0])

    def set_socket_timeout(self, seconds: float) -> None:
        self.socket().settimeout(seconds)
