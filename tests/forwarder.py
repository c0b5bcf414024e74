"""A TCP forwarder on 127.0.0.1 that connects onward from a random 127.x.y.z address.

Dovecot delays further logins from an address after a failed one (docs/test-stack.md, pitfall
2). Tests that log in with a wrong password on purpose go through a forwarder, so the penalty
falls on an address no other test (or parallel run) uses.

    forwarder = SourceForwarder((stack.host, stack.imap_port))
    ... imap://127.0.0.1:{forwarder.port} ...
    forwarder.close()
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading


class SourceForwarder:
    def __init__(self, target: tuple[str, int], source: str | None = None) -> None:
        self.target = target
        if source is None:
            octets = (random.randint(1, 254), random.randint(1, 254), random.randint(2, 254))
            source = "127.{}.{}.{}".format(*octets)
        self.source = source
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, source_address=(self.source, 0))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
