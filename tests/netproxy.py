"""A TCP proxy for tests: byte counting, traffic capture and injected network faults.

    with FaultProxy(("127.0.0.1", stack.imap_port)) as proxy:
        connect_to(proxy.host, proxy.port)
        proxy.bytes_to_client          # server -> client bytes so far
        proxy.captured_to_client()     # what the client received (bounded by capture_limit)
        proxy.set_latency(0.2)         # each forwarded chunk waits 0.2 s
        proxy.reset_after(to_client=1000)  # forward 1000 more bytes, then RST both sides
        proxy.set_blackhole(True)      # connections stay open, nothing flows

It listens on 127.0.0.1:0 and runs an asyncio loop in a daemon thread, so the code under test can
be plain blocking code. ``server_ssl`` makes it terminate TLS on the client side (an ``imaps://``
front for a plaintext server). Everything is bounded: capture (``capture_limit`` bytes each way),
connections (``max_connections``) and ``stop()`` (joins the thread with a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, TypeVar

Direction = Literal["to_server", "to_client"]
T = TypeVar("T")


@dataclass
class _Traffic:
    count: int = 0
    captured: bytearray = field(default_factory=bytearray)


class FaultProxy:
    def __init__(
        self,
        target: tuple[str, int],
        *,
        capture: bool = True,
        capture_limit: int = 16 * 1024 * 1024,
        max_connections: int = 64,
        server_ssl: ssl.SSLContext | None = None,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self.target = target
        self.capture = capture
        self.capture_limit = capture_limit
        self.max_connections = max_connections
        self.server_ssl = server_ssl
        self.chunk_size = chunk_size
        self.connections_accepted = 0
        self.connections_reset = 0
        self._lock = threading.Lock()
        self._traffic: dict[Direction, _Traffic] = {
            "to_server": _Traffic(),
            "to_client": _Traffic(),
        }
        self._latency = 0.0
        self._reset_budget: dict[Direction, int | None] = {"to_server": None, "to_client": None}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = "127.0.0.1"
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start within 10 s")
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.server_ssl, limit=self.chunk_size
        )
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    def stop(self, timeout: float = 10) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._loop = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _abort(writer, reset=False)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # ------------------------------------------------------------------ counters and capture
    @property
    def bytes_to_server(self) -> int:
        with self._lock:
            return self._traffic["to_server"].count

    @property
    def bytes_to_client(self) -> int:
        with self._lock:
            return self._traffic["to_client"].count

    def captured_to_server(self) -> bytes:
        with self._lock:
            return bytes(self._traffic["to_server"].captured)

    def captured_to_client(self) -> bytes:
        with self._lock:
            return bytes(self._traffic["to_client"].captured)

    def clear_traffic(self) -> None:
        """Zero the counters and forget the captured bytes (e.g. after login)."""
        with self._lock:
            self._traffic = {"to_server": _Traffic(), "to_client": _Traffic()}

    def _record(self, direction: Direction, data: bytes) -> None:
        with self._lock:
            traffic = self._traffic[direction]
            traffic.count += len(data)
            room = self.capture_limit - len(traffic.captured)
            if self.capture and room > 0:
                traffic.captured += data[:room]

    # ------------------------------------------------------------------ faults
    def set_latency(self, seconds: float) -> None:
        """Delay every forwarded chunk, each way, by SECONDS."""
        self._latency = max(0.0, seconds)

    def reset_after(self, *, to_client: int | None = None, to_server: int | None = None) -> None:
        """Forward this many more bytes in a direction, then reset the connection (one-shot)."""
        with self._lock:
            self._reset_budget = {"to_client": to_client, "to_server": to_server}

    def set_blackhole(self, on: bool = True) -> None:
        """While on, nothing is forwarded and new connections are held open without an answer."""
        loop, flowing = self._loop, self._flowing
        if loop is None or flowing is None:
            raise RuntimeError("start the proxy first")
        loop.call_soon_threadsafe(flowing.clear if on else flowing.set)

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        """Run a coroutine function on the proxy's loop (for tests that need to poke inside)."""
        if self._loop is None:
            raise RuntimeError("start the proxy first")
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ forwarding
    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._flowing is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(client_w)
        server_w: asyncio.StreamWriter | None = None
        try:
            with self._lock:
                self.connections_accepted += 1
                too_many = len(self._writers) > self.max_connections
            if too_many:
                return
            await self._flowing.wait()  # blackholed: hold the client, never connect
            server_r, server_w = await asyncio.open_connection(*self.target, limit=self.chunk_size)
            self._writers.add(server_w)
            pair = (client_w, server_w)
            up = asyncio.create_task(self._pump(client_r, server_w, "to_server", pair))
            down = asyncio.create_task(self._pump(server_r, client_w, "to_client", pair))
            await asyncio.gather(up, down, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio would log a cancelled connection handler)
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    self._writers.discard(writer)
                    _abort(writer, reset=False)
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(self.chunk_size)
                if not data:
                    break
                if self._latency:
                    await asyncio.sleep(self._latency)
                await self._flowing.wait()  # a blackhole switched on meanwhile swallows it
                with self._lock:
                    budget = self._reset_budget[direction]
                    if budget is not None and len(data) >= budget:
                        self._reset_budget[direction] = None
                        data, reset = data[:budget], True
                    else:
                        if budget is not None:
                            self._reset_budget[direction] = budget - len(data)
                        reset = False
                if data:
                    self._record(direction, data)
                    writer.write(data)
                    await writer.drain()
                if reset:
                    with self._lock:
                        self.connections_reset += 1
                    for w in pair:
                        _abort(w, reset=True)
                    return
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
        except (OSError, asyncio.IncompleteReadError, RuntimeError):
            for w in pair:
                _abort(w, reset=False)


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close now; with RESET the peer sees a TCP RST (SO_LINGER on, zero seconds)."""
    transport = writer.transport
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        transport.abort()
